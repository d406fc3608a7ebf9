"""Prometheus metrics: the web's own, and the workers' figures read from Redis at scrape time.

Web processes count callbacks with prometheus_client. Under gunicorn, several processes take
callbacks; deploy/gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before they start, so each
writes its figures to files there and /metrics adds them up (prometheus_client's
multiprocess mode): after N accepted callbacks the counter reads N, whichever process took
them. Without that variable (tests, `flask run`) the process's own registry is used.

Workers may run on other machines, so their figures live in Redis (a hash of counters they
increment, RQ's own registries) and every web node's /metrics reads them when scraped. They
are cluster-wide: every node reports the same value, so aggregate them with max(), not sum().
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterator
from typing import cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis, RedisError
from rq import Worker

from . import jobs, overview
from .config import KEY_PREFIX
from .connection import task_queue

ANSWERS = (
    "accepted",
    "duplicate",
    "signature",
    "malformed",
    "too_large",
    "unknown_job",
    "unavailable",
)
"""What a callback can be answered: accepted (202), duplicate (200), or why it was refused."""

KINDS = ("bulk", "events")

TASKS_KEY = f"{KEY_PREFIX}metrics:tasks"
"""Hash of worker-side counters: succeeded, retried, dead_lettered, swept, reconciler_runs."""

TASK_OUTCOMES = ("succeeded", "retried", "dead_lettered")

CALLBACKS = Counter(
    "bulkhook_callbacks",
    "Callbacks answered, by kind and answer (accepted, duplicate, or the reason refused).",
    ["kind", "answer"],
)
LATENCY = Histogram(
    "bulkhook_callback_duration_seconds",
    "Time from reading a callback to its answer, by kind.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
# Every series exists from the start, at 0. The children are kept: `labels()` takes a lock
# and builds a key on each call: about 2% of the web's CPU under load (py-spy).
_LATENCIES = {kind: LATENCY.labels(kind) for kind in KINDS}
_ANSWERED = {(kind, answer): CALLBACKS.labels(kind, answer) for kind in KINDS for answer in ANSWERS}


def callback_answered(kind: str, answer: str, seconds: float) -> None:
    """Count one answered callback and its latency."""
    counter = _ANSWERED.get((kind, answer)) or CALLBACKS.labels(kind, answer)
    counter.inc()
    (_LATENCIES.get(kind) or LATENCY.labels(kind)).observe(seconds)


def count_task(conn: Redis, outcome: str, amount: int = 1) -> None:
    """Count a worker-side event in Redis (any worker, any machine)."""
    conn.hincrby(TASKS_KEY, outcome, amount)


class RedisCollector(Collector):
    """The queue's and the workers' figures, read from Redis at each scrape."""

    def __init__(self, conn: Redis) -> None:
        self.conn = conn

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("bulkhook_redis_up", "Whether Redis answered this scrape.")
        try:
            figures = list(self._figures())
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from figures

    def _figures(self) -> Iterator[Metric]:
        conn = self.conn
        queue = task_queue(conn)
        raw = cast(dict[bytes, bytes], conn.hgetall(TASKS_KEY))
        counted = {k.decode(): int(v) for k, v in raw.items()}
        tasks = CounterMetricFamily(
            "bulkhook_tasks", "Follow-up task attempts by outcome, all workers.", labels=["outcome"]
        )
        for outcome in TASK_OUTCOMES:
            tasks.add_metric([outcome], counted.get(outcome, 0))
        yield tasks
        yield CounterMetricFamily(
            "bulkhook_sweeper_requeued",
            "Deliveries the sweeper queued again because RQ no longer held their task.",
            value=counted.get("swept", 0),
        )
        yield CounterMetricFamily(
            "bulkhook_reconciler_runs", "Reconciler runs, all workers.",
            value=counted.get("reconciler_runs", 0),
        )  # fmt: skip

        counts = overview.queue_counts(conn)
        depth = GaugeMetricFamily(
            "bulkhook_queue_tasks",
            "Follow-up work by where it is: deliveries ready for a drain, RQ tasks by registry.",
            labels=["state"],
        )
        for state in ("ready", "queued", "started", "scheduled", "dead_letter"):
            depth.add_metric([state], counts[state])
        yield depth
        yield GaugeMetricFamily(
            "bulkhook_pending_deliveries",
            "Accepted deliveries not processed yet.",
            value=counts["pending_deliveries"],
        )
        yield GaugeMetricFamily(
            "bulkhook_oldest_pending_age_seconds",
            "Age of the oldest accepted delivery not processed yet (0 when none waits).",
            value=counts["oldest_pending_age_seconds"],
        )

        recent = jobs.recent(conn, 1000)
        tally = Tally((r.get("state", "unknown"), r.get("status", "unknown")) for r in recent)
        by_status = GaugeMetricFamily(
            "bulkhook_jobs",
            "Bulk jobs bulkhook knows (the 1,000 latest), by its state and the job's status.",
            labels=["state", "status"],
        )
        for (state, status), count in sorted(tally.items()):
            by_status.add_metric([state, status], count)
        yield by_status
        yield GaugeMetricFamily(
            "bulkhook_workers", "RQ workers alive on bulkhook's queue.",
            value=Worker.count(queue=queue),
        )  # fmt: skip


def exposition(conn: Redis) -> tuple[bytes, str]:
    """The text of /metrics and its content type."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (CALLBACKS, LATENCY):
            registry.register(collector)
    registry.register(RedisCollector(conn))
    return generate_latest(registry), CONTENT_TYPE_LATEST
