"""The RQ worker that runs follow-up tasks, visible to stock RQ tools (`rq info`)."""

from __future__ import annotations

from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from . import handlers
from .config import QUEUE_NAME, Settings
from .connection import connect
from .upkeep import Upkeep


def build(settings: Settings, name: str | None = None) -> BaseWorker:
    """Return a worker on bulkhook's queue, after checking the handlers import."""
    handlers.load(settings.handlers)
    # fork (default): a work horse per task, heartbeated, so a task whose worker is killed is
    # retried within BULKHOOK_WORKER_MONITOR_SECONDS + 60 s. simple: tasks run in the worker
    # process, about 3x the rate, but a killed worker's task waits its whole timeout (600 s)
    # plus 60 s before RQ calls it abandoned.
    worker_class = SimpleWorker if settings.worker_class == "simple" else Worker
    return worker_class(
        [QUEUE_NAME], connection=connect(settings), serializer=JSONSerializer, name=name
    )


def run(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work until stopped (or, with `burst`, until the queue is empty).

    The scheduler runs inside the worker: retries with a delay and later status checks need
    it. The upkeep thread (sweeper, and reconciler with the API configured) runs beside it.
    """
    worker = build(settings, name)
    upkeep = None
    if not burst:
        upkeep = Upkeep(settings, worker.name)
        upkeep.start()
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        if upkeep is not None:
            upkeep.stop()
