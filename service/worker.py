"""The RQ worker that runs follow-up tasks, visible to stock RQ tools (`rq info`)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

from redis import RedisError
from redis.client import PubSub
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from . import drain, handlers
from .config import QUEUE_NAME, Settings
from .connection import connect
from .upkeep import Upkeep

log = logging.getLogger(__name__)

RESTART_DELAYS = (1, 2, 4, 8, 15)
"""Seconds before each consecutive attempt to start RQ's worker again after Redis failed it;
the last one repeats until Redis answers."""

STEADY_SECONDS = 60
"""A worker that ran this long before failing starts again from the first delay."""

DEQUEUE_MARGIN_SECONDS = 15
"""RQ blocks an idle worker's dequeue for worker_ttl minus this, and only sweeps its registries
once that returns."""


class _StopAware:
    """Remembers a stop request, so a loop that ended for it is not started again; and stops
    without waiting up to a minute for RQ's pubsub thread."""

    stop_asked = False
    # RQ's own attributes (typed loosely there: pubsub_thread starts as None).
    pubsub: PubSub | None
    pubsub_thread: Any
    log: logging.Logger
    name: str

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_asked = True
        super().request_stop(signum, frame)  # type: ignore[misc]

    def unsubscribe(self) -> None:
        """RQ's own, but with the wait for the pubsub thread bounded.

        RQ stops that thread and then joins it for at most 1 s; redis-py 8's stop() already
        joins it without a bound. When the thread has just read the unsubscribe reply, it
        waits for a new subscription for RQ's sleep_time (60 s): a SIGTERMed worker then took
        up to a minute to exit (seen in CI and in `make bench`; py-spy showed the main thread
        in PubSubWorkerThread.stop). The thread is a daemon: leaving it is safe.
        """
        if self.pubsub_thread is None or self.pubsub is None:
            return
        self.log.info("Worker %s: unsubscribing from its pubsub channel", self.name)
        self.pubsub.unsubscribe()
        self.pubsub_thread.stop(timeout=1)
        self.pubsub.close()


class ForkingWorker(_StopAware, Worker):
    """RQ's default worker: a heartbeated work horse per task."""


class InProcessWorker(_StopAware, SimpleWorker):
    """RQ's SimpleWorker: tasks run in the worker process."""


def build(settings: Settings, name: str | None = None) -> ForkingWorker | InProcessWorker:
    """Return a worker on bulkhook's queue, after checking the handlers import."""
    handlers.load(settings.handlers)
    # fork (default): a work horse per task (a drain runs many deliveries), heartbeated, so a
    # task whose worker is killed is retried within BULKHOOK_WORKER_MONITOR_SECONDS + 60 s.
    # simple: tasks run in the worker process (once 3x the rate; with drains, the same), and a
    # killed worker's task waits its whole timeout (600 s) plus 60 s before RQ calls it
    # abandoned.
    worker_class = InProcessWorker if settings.worker_class == "simple" else ForkingWorker
    maintenance = settings.worker_maintenance_seconds
    return worker_class(
        [QUEUE_NAME],
        connection=connect(settings),
        serializer=JSONSerializer,
        name=name,
        job_monitoring_interval=settings.worker_monitor_seconds,
        maintenance_interval=maintenance,
        # An idle worker wakes every `maintenance` seconds to run it (RQ's default: 405 s).
        worker_ttl=maintenance + DEQUEUE_MARGIN_SECONDS,
    )


def run(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work until stopped (or, with `burst`, until the queue is empty).

    The scheduler runs inside the worker: retries with a delay and later status checks need
    it. The upkeep thread (sweeper, and reconciler with the API configured) runs beside it.

    RQ's worker gives up on some Redis failures: one while it starts (a failover, a restart),
    a timeout, or an error during its registry maintenance. Outside burst mode it is started
    again after a pause, so a Redis outage does not need a supervisor to bring workers back
    (and does not end a Procfile runner's whole formation).
    """
    if burst:
        drain.LINGER_SECONDS = 0.0  # inherited by each work horse: see its docstring
        return build(settings, name).work(burst=True, with_scheduler=True, logging_level="INFO")
    upkeep = Upkeep(settings, name or f"{socket.gethostname()}.{os.getpid()}")
    upkeep.start()
    worked = False
    failures = 0
    try:
        while True:
            started = time.monotonic()
            worker: ForkingWorker | InProcessWorker | None = None
            try:
                worker = build(settings, name)
                worked = worker.work(with_scheduler=True, logging_level="INFO") or worked
                if worker.stop_asked:
                    return worked
                reason = "RQ's worker loop ended (see its last error)"
            except RedisError as exc:
                if worker is not None and worker.stop_asked:
                    return worked
                reason = f"redis error {exc.__class__.__name__}: {exc}"
            if worker is not None:
                _abandon(worker)
            failures = 1 if time.monotonic() - started > STEADY_SECONDS else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1]
            log.warning("worker stopped: %s; starting it again in %d s", reason, delay)
            _pause(delay)
    finally:
        upkeep.stop()


def _abandon(worker: ForkingWorker | InProcessWorker) -> None:
    """Stop the scheduler process a failed worker may have forked, and mark it dead if Redis
    lets us, so its name is free for the next start (RQ refuses a live duplicate name)."""
    if worker.scheduler is not None:
        worker.stop_scheduler()
    try:
        worker.register_death()
    except RedisError:
        pass  # its key expires by itself after worker_ttl + 60 s


def _pause(seconds: float) -> None:
    """Sleep between attempts. Nothing is in hand: a stop signal now simply ends the process
    (RQ's handlers, left from the failed worker, would act on a worker that is gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    time.sleep(seconds)
