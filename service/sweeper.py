"""The sweeper: finds accepted deliveries whose task RQ no longer holds, and queues them again.

RQ strands a task in a few corner cases, all seen in this project's fault tests when workers
and Redis are killed under load: a task left in the intermediate list by a worker killed
right after taking it; one left in the started registry with status "queued", which RQ's
clean-up drops; a retry whose time passed while no scheduler ran; and a worker killed while
holding RQ's registry-cleaning lock, which stops RQ's own clean-up for 15 minutes. bulkhook
keeps its own set of deliveries not yet done, so it can tell, and act.

Most deliveries never have an RQ task of their own: a drain takes them (`drain.py`). One
waiting in the drain's list is held; one taken by a drain that no longer runs is lost. The
sweeper also queues a drain when deliveries wait and no drain task is queued.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import cast

from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.utils import parse_composite_key

from . import delivery, drain
from .config import Settings
from .connection import fetch_task, task_queue
from .delivery import PENDING_KEY
from .intake import TASK, task_options

log = logging.getLogger(__name__)

BATCH = 200
"""Most deliveries looked at in one sweep, oldest first."""


def sweep(conn: Redis, settings: Settings) -> list[str]:
    """Queue again every pending delivery old enough whose task is nowhere in RQ."""
    queue = task_queue(conn)
    # Abandoned started tasks first, by RQ's own rule (retried, or failed when out of retries).
    StartedJobRegistry(queue=queue).cleanup()
    if drain.ensure(conn, queue):
        log.warning("sweeper queued a drain: deliveries were waiting and none was queued")
    cutoff = time.time() - settings.sweep_after_seconds
    candidates = cast(
        list[bytes], conn.zrangebyscore(PENDING_KEY, "-inf", cutoff, start=0, num=BATCH)
    )
    if not candidates:
        return []
    running = _running(conn, queue.started_job_registry.key)
    requeued = []
    for raw in candidates:
        delivery_id = raw.decode()
        loaded = delivery.load(conn, delivery_id)
        if loaded is None or loaded[0].get("state") == delivery.DONE:
            conn.zrem(PENDING_KEY, delivery_id)
            continue
        fields = loaded[0]
        if _held(conn, fields, cutoff, running):
            continue
        # Take it out of wherever RQ left it, so RQ cannot also run it from there.
        conn.lrem(queue.intermediate_queue_key, 0, delivery_id)
        conn.zrem(queue.scheduled_job_registry.key, delivery_id)
        queue.enqueue_call(TASK, **task_options(settings, fields))
        requeued.append(delivery_id)
    if requeued:
        log.warning("sweeper queued %d lost task(s) again: %s", len(requeued), requeued[:10])
    return requeued


def _held(conn: Redis, fields: dict[str, str], cutoff: float, running: set[str]) -> bool:
    """Whether a drain or RQ still has the delivery somewhere it will come out of by itself."""
    job = fetch_task(conn, fields["id"])
    if job is not None:
        if job.get_status(refresh=False) == JobStatus.FAILED:
            return True  # dead-lettered: left for a person (`bulkhook failed`)
        return _rq_has(conn, job, cutoff, running)
    taken_by = fields.get("taken_by")
    if taken_by is None:
        return True  # in the drain's list: intake put it there, only a drain takes it out
    if float(fields.get("taken_at", "0")) > cutoff:
        return True  # taken recently, maybe by a drain that started after `running` was read
    # The drain that took it is at work, or RQ will run it again (its horse died), and it
    # takes its deliveries again first. Judged as a delivery's own task is: a drain RQ says
    # is queued but that is in no queue would never take them again.
    drainer = fetch_task(conn, taken_by)
    return drainer is not None and _rq_has(conn, drainer, cutoff, running)


def _rq_has(conn: Redis, job: Job, cutoff: float, running: set[str]) -> bool:
    """Whether RQ holds `job` somewhere it will run it from by itself."""
    task_id = job.id
    moments = [job.enqueued_at, job.started_at, job.ended_at, job.last_heartbeat]
    if any(m is not None and _timestamp(m) > cutoff for m in moments):
        return True  # moved recently: it may be between two places right now
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return task_id in running
    queue = task_queue(conn)
    if status == JobStatus.SCHEDULED:
        due = conn.zscore(queue.scheduled_job_registry.key, task_id)
        return due is not None and float(due) > cutoff  # long overdue: no scheduler ran
    if status == JobStatus.QUEUED:
        # The intermediate list holds a task between a worker taking it and starting it.
        return conn.lpos(queue.key, task_id) is not None or task_id in running
    return False


def _running(conn: Redis, key: str) -> set[str]:
    """Task ids with a live entry in the started registry."""
    now = time.time()
    entries = cast(list[tuple[bytes, float]], conn.zrange(key, 0, -1, withscores=True))
    return {parse_composite_key(entry.decode())[0] for entry, score in entries if score > now}


def _timestamp(moment: datetime) -> float:
    # RQ writes UTC; a naive value is UTC too.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
