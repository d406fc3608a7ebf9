"""The sender's side of the zero-loss suites: load with retries, then what must hold after.

A stack under test offers `base`, `key`, `faults`, `restarts`, and what `Observed` reads from
its `output` file and `logs`; FaultStack (test_faults) and SentinelStack (test_sentinel) do.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from service.delivery import record_key
from service.intake import HELD_BODY_BYTES
from service.signature import sign

from .processes import wait_for

CONCURRENCY = 32
"""Senders at once."""

Stack = Any
"""A running stack, as described above."""


class Observed:
    """What a stack's handlers (tests.handlers.effect_once) and processes left behind."""

    output: Path
    logs: list

    def effects(self) -> Counter:
        """Effects made, by job id: each should be there once."""
        folder = Path(f"{self.output}.effects")
        if not folder.exists():
            return Counter()
        # Dot files are drafts of effects not yet made (tests/handlers.py, effect_once).
        return Counter(path.read_text() for path in folder.iterdir()
                       if not path.name.startswith("."))  # fmt: skip

    def invocations(self) -> int:
        """Handler calls, effect or not."""
        return len(self.output.read_text().splitlines()) if self.output.exists() else 0

    def log_text(self) -> str:
        """Every log line the stack's processes wrote."""
        return "".join(Path(log.name).read_text(errors="replace") for log in self.logs)


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


def send(stack: Stack, tally: Tally, body: bytes, job_id: str) -> None:
    """Deliver one callback as the vendor would: retry on 503 and on dropped connections."""
    headers = {
        "Elements-Webhook-Signature": sign(stack.key, body),
        "Content-Type": "application/json",
    }
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


def _bulk_body(job_id: str, *, large: bool) -> bytes:
    document = {"id": job_id, "status": "COMPLETED"}
    if large:
        document["pad"] = "x" * (HELD_BODY_BYTES + 1)
    return json.dumps(document).encode()


def run_load(stack: Stack, count: int, faults: list | None = None) -> tuple[Tally, float]:
    """Send `count` distinct callbacks plus 10% repeats, CONCURRENCY at a time; one in ten
    has a body large enough to be held out of the intake script (intake.HELD_BODY_BYTES)."""
    bodies = [(f"job-{n}", _bulk_body(f"job-{n}", large=n % 10 == 0)) for n in range(count)]
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


def settle(stack: Stack, acknowledged: int, timeout: float) -> Counter:
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


def check(stack: Stack, tally: Tally, duration: float, name: str, settle_seconds: float):
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
    assert stack.key not in stack.log_text()  # the key never reaches a log line


def bodies_left_behind(url: str) -> list[str]:
    """Records holding only a body written ahead of its intake script (intake.py), kept with
    no expiry: none should be, whatever was killed while it was written."""
    from redis import Redis

    conn = Redis.from_url(url)
    try:
        return [key.decode() for key in conn.scan_iter(record_key("*"), count=1000)
                if not conn.hexists(key, "state") and conn.ttl(key) < 0]  # fmt: skip
    finally:
        conn.close()
