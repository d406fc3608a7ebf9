"""Zero loss: thousands of signed callbacks under load, while workers, gunicorn workers and
Redis are killed; every acknowledged callback has its downstream effect exactly once.

The web and worker processes run as the Procfile runs them, against a redis-server started
with the shipped deploy/redis.conf. The test plays the parts of the sender (retrying on 503
and on dropped connections, as Open Connectors does) and of a supervisor (restarting a
worker that died, as systemd would).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.embedded_redis import EmbeddedRedis, free_port

from .load import Observed, bodies_left_behind, check, run_load
from .processes import (
    REPO,
    children,
    environment,
    procfile_command,
    stop,
    wait_until_serving,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

KEY = "fault-suite-key-31415"


class FaultStack(Observed):
    """Redis (shipped config), web (Procfile) and two workers (Procfile), supervised."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = KEY
        self.redis = EmbeddedRedis(tmp / "redis", config=REPO / "deploy" / "redis.conf").start()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output = tmp / "handled.jsonl"
        self.env = environment(
            PORT=str(self.port),
            REDIS_URL=self.redis.url,
            BULKHOOK_SIGNATURE_KEY=KEY,
            BULKHOOK_HANDLERS="tests.handlers.effect_once",
            BULKHOOK_TEST_OUTPUT=str(self.output),
            BULKHOOK_RETRY_INTERVALS="1,2,4,8",
            BULKHOOK_REDIS_TIMEOUT_SECONDS="1",
            BULKHOOK_WORKER_MONITOR_SECONDS="5",
            BULKHOOK_WORKER_MAINTENANCE_SECONDS="10",
            BULKHOOK_SWEEP_AFTER_SECONDS="20",
            BULKHOOK_RECONCILE_INTERVAL_SECONDS="5",
            WEB_CONCURRENCY="2",
        )
        self.logs: list = []
        self.faults: list[str] = []
        self.restarts = 0
        self.web = self._start("web")
        self.workers = [self._start("worker", n) for n in range(2)]
        wait_until_serving(f"{self.base}/readyz", self.web)
        self.supervising = True
        self.supervisor = threading.Thread(target=self._supervise, daemon=True)
        self.supervisor.start()

    def _start(self, name: str, number: int = 0) -> subprocess.Popen:
        log = open(self.tmp / f"{name}-{number}-{len(self.logs)}.log", "wb")  # noqa: SIM115
        self.logs.append(log)
        return subprocess.Popen(procfile_command(name), cwd=REPO, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip

    def _supervise(self) -> None:
        while self.supervising:
            for number, worker in enumerate(self.workers):
                if worker.poll() is not None:
                    self.workers[number] = self._start("worker", number)
                    self.restarts += 1
            time.sleep(0.2)

    def kill_worker(self, number: int) -> None:
        """SIGKILL a worker and the work horse it may have forked: a task dies mid-way."""
        worker = self.workers[number]
        for child in children(worker.pid):
            # A drain's work horse can finish between listing and killing it (seen in CI).
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        worker.kill()
        self.faults.append(f"SIGKILL worker {number} (and its work horse)")

    def kill_web_worker(self) -> None:
        """SIGKILL one gunicorn worker process; the master starts another."""
        victims = children(self.web.pid)
        os.kill(random.choice(victims), signal.SIGKILL)
        self.faults.append("SIGKILL one gunicorn worker")

    def restart_redis(self) -> None:
        """SIGKILL Redis, then start it again on the same port and data directory."""
        self.redis.stop(kill=True)
        time.sleep(0.5)
        self.redis.start()
        self.faults.append("SIGKILL Redis, restart from its append-only file")

    def close(self) -> None:
        self.supervising = False
        self.supervisor.join()
        # Every part is stopped even if one fails to stop (then raised after the rest).
        with contextlib.ExitStack() as cleanup:
            for log in self.logs:
                cleanup.callback(log.close)
            cleanup.callback(self.redis.stop)
            for process in [*self.workers, self.web]:
                cleanup.callback(stop, process)


@pytest.fixture
def fault_stack(tmp_path: Path) -> Iterator[FaultStack]:
    running = FaultStack(tmp_path)
    yield running
    running.close()


def test_zero_loss_under_load(fault_stack: FaultStack) -> None:
    tally, duration = run_load(fault_stack, 3000)

    assert len(tally.final) == 3000  # without faults, every callback is acknowledged
    assert tally.answers[202] == 3000
    assert tally.answers[200] == 300  # the repeats, answered as duplicates
    check(fault_stack, tally, duration, "load", settle_seconds=120)


def test_zero_loss_while_workers_gunicorn_and_redis_are_killed(fault_stack: FaultStack) -> None:
    stack = fault_stack
    faults = [
        (1.0, lambda: stack.kill_worker(0)),
        (1.5, stack.kill_web_worker),
        (1.5, stack.restart_redis),
        (1.5, lambda: stack.kill_worker(1)),
        (1.0, stack.kill_web_worker),
        (1.0, lambda: stack.kill_worker(0)),
    ]

    tally, duration = run_load(stack, 4000, faults)

    assert len(stack.faults) == 6
    # Tasks whose worker died come back after RQ's abandoned-task window (monitor + 60 s).
    check(stack, tally, duration, "faults", settle_seconds=240)
    assert bodies_left_behind(stack.redis.url) == []
