"""Shared parts of the bench scripts: a server stack on loopback and a load driver."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from service.signature import sign  # noqa: E402
from tests.processes import procfile_command as procfile  # noqa: E402

KEY = "bench-key"


@contextmanager
def web_stack(tmp: Path, redis_args: tuple[str, ...] = (), **settings: str) -> Iterator[str]:
    """Redis with the shipped config (plus `redis_args`) and gunicorn as the Procfile runs it."""
    redis = EmbeddedRedis(tmp / "redis", config=REPO / "deploy" / "redis.conf",
                          extra_args=redis_args).start()  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PORT": str(port),
        "REDIS_URL": redis.url,
        "BULKHOOK_SIGNATURE_KEY": KEY,
        **settings,
    }
    with open(tmp / "web.log", "wb") as log:
        web = subprocess.Popen(procfile("web"), cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if requests.get(base + "/readyz", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    time.sleep(0.1)
            yield base
        finally:
            web.terminate()
            web.wait(timeout=30)
            redis.stop()


def drive(base: str, count: int, concurrency: int, size: int = 0) -> dict[str, float]:
    """POST `count` distinct signed bulk callbacks; accepted/s and latency percentiles (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    local = threading.local()

    def one(_: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = json.dumps({"id": uuid.uuid4().hex, "status": "COMPLETED",
                           "pad": "x" * size}).encode()  # fmt: skip
        headers = {"Elements-Webhook-Signature": sign(KEY, body)}
        started = time.perf_counter()
        answer = session.post(base + "/callbacks/bulk", data=body, headers=headers, timeout=30)
        elapsed = time.perf_counter() - started
        if answer.status_code == 202:
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(count)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "accepted": len(latencies),
        "per_second": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
    }
