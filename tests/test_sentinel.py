"""Redis Sentinel: under a steady stream of callbacks the primary is SIGKILLed; the web and the
worker follow the failover by themselves, answer 503 (never 500, never a false 2xx) while they
cannot write, and no acknowledged callback is lost.

Real processes on loopback: a primary and two replicas (deploy/redis.conf), three sentinels
(`redis-server --sentinel`), the web and a worker as the Procfile runs them. Two replicas, so
that after the failover the new primary still has one replica to confirm writes to
(BULKHOOK_REDIS_MIN_REPLICAS=1); with one replica, callbacks would get 503 until the old
primary came back.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis, RedisError

from service.config import Settings
from service.connection import connect
from service.embedded_redis import EmbeddedRedis, find_binary, free_port

from .load import Observed, Tally, check, run_load, send
from .processes import REPO, environment, procfile_command, stop, wait_for, wait_until_serving

pytestmark = [pytest.mark.slow, pytest.mark.faults]

KEY = "sentinel-suite-key-27182"
MASTER = "bulkhook-main"


class Sentinel:
    """One `redis-server --sentinel` watching MASTER, with a config file of its own to rewrite."""

    def __init__(self, folder: Path, primary_port: int) -> None:
        folder.mkdir(parents=True)
        self.port = free_port()
        config = folder / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {folder}\nlogfile sentinel.log\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 2\n"
        )
        self.process = subprocess.Popen(
            [find_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def master(self) -> tuple[str, int] | None:
        try:
            found = self.client.sentinel_get_master_addr_by_name(MASTER)
        except RedisError:
            return None
        return (found[0], int(found[1])) if found else None

    def knows_everyone(self) -> bool:
        try:
            replicas = self.client.sentinel_slaves(MASTER)
            others = self.client.sentinel_sentinels(MASTER)
        except RedisError:
            return False
        return len(replicas) == 2 and len(others) == 2

    def close(self) -> None:
        self.client.close()
        stop(self.process)


class SentinelStack(Observed):
    """Primary, two replicas, three sentinels, web and worker: what test_faults' load needs."""

    def __init__(self, tmp: Path, handlers: str = "tests.handlers.effect_once") -> None:
        self.tmp = tmp
        self.key = KEY
        config = REPO / "deploy" / "redis.conf"
        self.primary = EmbeddedRedis(tmp / "primary", config=config).start()
        self.replicas = [
            EmbeddedRedis(
                tmp / f"replica-{n}",
                config=config,
                extra_args=("--replicaof", "127.0.0.1", str(self.primary.port)),
            ).start()
            for n in range(2)
        ]
        self.sentinels = [Sentinel(tmp / f"sentinel-{n}", self.primary.port) for n in range(3)]
        wait_for(lambda: all(s.knows_everyone() for s in self.sentinels), 30, "sentinels")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output = tmp / "handled.jsonl"
        self.settings = {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "REDIS_SENTINEL_MASTER": MASTER,
            "BULKHOOK_REDIS_MIN_REPLICAS": "1",
            "BULKHOOK_REDIS_TIMEOUT_SECONDS": "1",
        }
        self.env = environment(
            PORT=str(self.port),
            BULKHOOK_SIGNATURE_KEY=KEY,
            BULKHOOK_HANDLERS=handlers,
            BULKHOOK_TEST_OUTPUT=str(self.output),
            BULKHOOK_RETRY_INTERVALS="1,2,4,8",
            BULKHOOK_WORKER_MONITOR_SECONDS="5",
            BULKHOOK_WORKER_MAINTENANCE_SECONDS="10",
            BULKHOOK_SWEEP_AFTER_SECONDS="20",
            BULKHOOK_RECONCILE_INTERVAL_SECONDS="5",
            WEB_CONCURRENCY="2",
            **self.settings,
        )
        self.faults: list[str] = []
        self.restarts = 0
        self.logs: list = []
        self.web = self._start("web")
        self.worker = self._start("worker")
        wait_until_serving(f"{self.base}/readyz", self.web)
        # The worker registers itself once connected: only then is it following the primary.
        primary = Redis(port=self.primary.port)
        wait_for(lambda: primary.scard("rq:workers"), 30, "the worker to register")
        primary.close()

    def _start(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self.logs.append(log)
        return subprocess.Popen(procfile_command(name), cwd=REPO, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip

    def kill_primary(self) -> None:
        self.primary.stop(kill=True)
        self.faults.append(f"SIGKILL the primary (port {self.primary.port})")

    def current_primary(self) -> tuple[str, int] | None:
        return self.sentinels[0].master()

    def close(self) -> None:
        # Every part is stopped even if one fails to stop (then raised after the rest).
        with contextlib.ExitStack() as cleanup:
            for log in self.logs:
                cleanup.callback(log.close)
            for server in (self.primary, *self.replicas):
                cleanup.callback(server.stop)
            for sentinel in self.sentinels:
                cleanup.callback(sentinel.close)
            for process in (self.worker, self.web):
                cleanup.callback(stop, process)


@pytest.fixture
def sentinel_stack(tmp_path: Path) -> Iterator[SentinelStack]:
    running = SentinelStack(tmp_path)
    yield running
    running.close()


def test_settings_reach_the_primary_through_the_sentinels(sentinel_stack) -> None:
    settings = Settings.from_env(sentinel_stack.settings)
    conn = connect(settings)
    try:
        assert conn.set("bulkhook:test:sentinel", "1")
        assert ("127.0.0.1", sentinel_stack.primary.port) == sentinel_stack.current_primary()
        assert conn.connection_pool.get_master_address()[1] == sentinel_stack.primary.port
    finally:
        conn.close()


def test_failover_under_load_loses_no_acknowledged_callback(sentinel_stack) -> None:
    stack = sentinel_stack
    old = stack.current_primary()
    failover: dict[str, float] = {}

    def kill_and_time() -> None:
        stack.kill_primary()
        failover["killed"] = time.monotonic()
        wait_for(lambda: stack.current_primary() != old, 30, "the sentinels to promote a replica")
        failover["promoted"] = time.monotonic()

    tally, duration = run_load(stack, 3000, faults=[(2.0, kill_and_time)])

    assert stack.current_primary() in {("127.0.0.1", r.port) for r in stack.replicas}
    # Every callback was acknowledged in the end: the service recovered by itself, and the
    # only answers besides 2xx were 503s (and dropped connections while gunicorn's workers
    # waited on the dead primary).
    assert len(tally.final) == 3000
    assert set(tally.answers) <= {200, 202, 503, "ConnectionError", "ReadTimeout"}, tally.answers
    assert tally.answers[503] > 0  # the test did hit the failover window
    check(stack, tally, duration, "sentinel", settle_seconds=180)
    print(
        f"\nfailover: promoted {failover['promoted'] - failover['killed']:.1f} s after the kill; "
        f"answers {dict(tally.answers)}; {stack.invocations()} handler calls for 3000 effects"
    )


@pytest.fixture
def flaky_stack(tmp_path: Path) -> Iterator[SentinelStack]:
    """The handler fails once per delivery: each one needs the scheduler for its retry."""
    running = SentinelStack(tmp_path, handlers="tests.handlers.flaky,tests.handlers.effect_once")
    yield running
    running.close()


def test_worker_and_scheduler_follow_the_failover(flaky_stack) -> None:
    """A callback sent after the failover is processed, and retried, by the same worker.

    RQ's scheduler process dies when its Redis connection fails; the worker starts a new one
    at its next maintenance (BULKHOOK_WORKER_MAINTENANCE_SECONDS), once the dead one's lock
    has expired, and the sweeper queues a retry that is long overdue
    (BULKHOOK_SWEEP_AFTER_SECONDS): whichever comes first runs the retry. When the failover
    catches the worker while it starts, RQ's worker gives up and `bulkhook worker` starts it
    again (seen in CI on a loaded machine).
    """
    stack = flaky_stack
    old = stack.current_primary()
    stack.kill_primary()
    wait_for(lambda: stack.current_primary() != old, 30, "the sentinels to promote a replica")
    tally = Tally()

    send(stack, tally, b'{"id": "after-failover", "status": "COMPLETED"}', "after-failover")

    # 202, or 200 when a first attempt was written but answered 503 while the remaining
    # replica was still catching up with the new primary (WAIT timed out).
    assert tally.final.get("after-failover") in (200, 202)
    try:
        wait_for(lambda: stack.effects().get("after-failover"), 240, "the worker to retry it")
    except AssertionError as exc:
        tail = (stack.tmp / "worker.log").read_text(errors="replace")[-4000:]
        raise AssertionError(
            f"{exc}; worker exit code {stack.worker.poll()}; log:\n{tail}"
        ) from None
    assert '"handler": "flaky"' in stack.output.read_text()  # its first attempt had failed
    assert stack.worker.poll() is None
