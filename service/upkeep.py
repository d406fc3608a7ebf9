"""Upkeep, from inside every worker: the sweeper, and the reconciler when the API is set.

Every worker runs this thread; a Redis key that lives one interval lets only one of them
act per interval, so running many workers on many nodes is safe.
"""

from __future__ import annotations

import logging
import threading

from redis import RedisError

from . import metrics, pipeline, sweeper
from .config import KEY_PREFIX, Settings
from .connection import connect

log = logging.getLogger(__name__)

TURN_KEY = f"{KEY_PREFIX}upkeep:turn"
"""Set for one interval by the worker whose turn it is."""


class Upkeep(threading.Thread):
    """Runs the sweeper, and the reconciler, every `reconcile_interval_seconds`, once overall."""

    def __init__(self, settings: Settings, name: str) -> None:
        super().__init__(name="bulkhook-upkeep", daemon=True)
        self.settings = settings
        self.worker_name = name
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = connect(self.settings)
        interval = self.settings.reconcile_interval_seconds
        while not self.stopped.wait(interval):
            try:
                if conn.set(TURN_KEY, self.worker_name, nx=True, ex=interval):
                    swept = sweeper.sweep(conn, self.settings)
                    if swept:
                        metrics.count_task(conn, "swept", len(swept))
                    if self.settings.api_configured:
                        pipeline.reconcile(conn, self.settings)
                        metrics.count_task(conn, "reconciler_runs")
            except RedisError as exc:
                log.warning("upkeep: redis error %s; trying next round", exc.__class__.__name__)
            except Exception:
                log.exception("upkeep round failed; trying next round")

    def stop(self) -> None:
        """Ask the thread to end after its current round."""
        self.stopped.set()
