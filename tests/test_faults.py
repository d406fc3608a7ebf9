"""Zero loss: thousands of signed callbacks under load, while workers, gunicorn workers and
Redis are killed; every acknowledged callback has its downstream effect exactly once.

The web and worker processes run as the Procfile runs them, against a redis-server started
with the shipped deploy/redis.conf. The test plays the parts of the sender (retrying on 503
and on dropped connections, as Open Connectors does) and of a supervisor (restarting a
worker that died, as systemd would).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from service.embedded_redis import EmbeddedRedis, free_port
from service.signature import sign

from .processes import (
    REPO,
    children,
    environment,
    procfile_command,
    stop,
    wait_for,
    wait_until_serving,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

KEY = "fault-suite-key-31415"
CONCURRENCY = 32


@dataclass
class Tally:
    """What the sender saw."""

    attempts: int = 0
    answers: Counter = field(default_factory=Counter)
    final: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, answer: int | str) -> None:
        with self.lock:
            self.attempts += 1
            self.answers[answer] += 1


class FaultStack:
    """Redis (shipped config), web (Procfile) and two workers (Procfile), supervised."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
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

    def effects(self) -> Counter:
        folder = Path(f"{self.output}.effects")
        if not folder.exists():
            return Counter()
        return Counter(path.read_text() for path in folder.iterdir())

    def invocations(self) -> int:
        return len(self.output.read_text().splitlines()) if self.output.exists() else 0

    def close(self) -> None:
        self.supervising = False
        self.supervisor.join()
        for process in [self.web, *self.workers]:
            stop(process)
        self.redis.stop()
        for log in self.logs:
            log.close()

    def log_text(self) -> str:
        return "".join(Path(log.name).read_text(errors="replace") for log in self.logs)


@pytest.fixture
def fault_stack(tmp_path: Path) -> Iterator[FaultStack]:
    running = FaultStack(tmp_path)
    yield running
    running.close()


def send(stack: FaultStack, tally: Tally, body: bytes, job_id: str) -> None:
    """Deliver one callback as the vendor would: retry on 503 and on dropped connections."""
    headers = {"Elements-Webhook-Signature": sign(KEY, body), "Content-Type": "application/json"}
    for _ in range(200):
        try:
            answer = requests.post(f"{stack.base}/callbacks/bulk", data=body, headers=headers,
                                   timeout=15)  # fmt: skip
            code: int | str = answer.status_code
        except requests.RequestException as exc:
            code = exc.__class__.__name__
        tally.saw(code)
        if code in (200, 202):
            with tally.lock:
                tally.final[job_id] = int(code)
            return
        if isinstance(code, int) and code != 503:
            return  # anything else is a defect the assertions below will show
        time.sleep(0.25)


def run_load(stack: FaultStack, count: int, faults: list | None = None) -> tuple[Tally, float]:
    """Send `count` distinct callbacks plus 10% repeats, CONCURRENCY at a time."""
    bodies = [(f"job-{n}", json.dumps({"id": f"job-{n}", "status": "COMPLETED"}).encode())
              for n in range(count)]  # fmt: skip
    bodies += random.sample(bodies, count // 10)
    random.shuffle(bodies)
    tally = Tally()
    started = time.monotonic()
    injector = None
    if faults:

        def inject() -> None:
            for delay, fault in faults:
                time.sleep(delay)
                fault()

        injector = threading.Thread(target=inject)
        injector.start()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        for job_id, body in bodies:
            pool.submit(send, stack, tally, body, job_id)
    if injector is not None:
        injector.join()
    return tally, time.monotonic() - started


def settle(stack: FaultStack, acknowledged: int, timeout: float) -> Counter:
    """Wait until every acknowledged callback had its effect (or the timeout)."""
    try:
        wait_for(lambda: sum(stack.effects().values()) >= acknowledged, timeout, "effects")
    except AssertionError:
        pass  # the assertions below say what is missing
    time.sleep(1)  # any duplicate effect would show up now
    return stack.effects()


def report(name: str, **figures: object) -> None:
    """Keep the figures for `make reliability`'s report, when it asked for them."""
    folder = os.environ.get("RELIABILITY_REPORT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2))


def check(stack: FaultStack, tally: Tally, duration: float, name: str, settle_seconds: float):
    acknowledged = set(tally.final)
    effects = settle(stack, len(acknowledged), settle_seconds)
    lost = sorted(acknowledged - set(effects))
    duplicated = sorted(job for job, times in effects.items() if times > 1)
    unexpected = sorted(set(effects) - acknowledged)
    server_errors = {a: n for a, n in tally.answers.items() if isinstance(a, int) and a >= 500
                     and a != 503}  # fmt: skip
    report(
        name,
        callbacks=len({*acknowledged}) if acknowledged else 0,
        requests=tally.attempts,
        concurrency=CONCURRENCY,
        seconds=round(duration, 1),
        answers={str(k): v for k, v in tally.answers.items()},
        faults=stack.faults,
        worker_restarts=stack.restarts,
        acknowledged=len(acknowledged),
        processed=len(effects),
        lost=len(lost),
        duplicated=len(duplicated),
        handler_invocations=stack.invocations(),
    )
    assert server_errors == {}, f"5xx other than 503: {server_errors}"
    assert tally.answers.get(401, 0) == 0 and tally.answers.get(400, 0) == 0
    assert lost == [], f"{len(lost)} acknowledged callbacks never processed: {lost[:10]}"
    assert duplicated == [], f"effects twice: {duplicated[:10]}"
    assert unexpected == []
    assert KEY not in stack.log_text()  # the key never reaches a log line


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
