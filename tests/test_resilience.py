"""Graceful stops, Redis killed right after a 2xx, and hostile input against the real server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from service.delivery import idempotency_key, record_key
from service.drain import READY_KEY
from service.embedded_redis import EmbeddedRedis, free_port
from service.signature import sign

from .processes import (
    REPO,
    environment,
    procfile_command,
    send_raw,
    stop,
    wait_for,
    wait_until_serving,
)

pytestmark = pytest.mark.slow

KEY = "resilience-key"


class Server:
    """gunicorn as the Procfile runs it, on a redis-server with the shipped config."""

    def __init__(self, tmp: Path, **settings: str) -> None:
        self.tmp = tmp
        self.redis = EmbeddedRedis(tmp / "redis", config=REPO / "deploy" / "redis.conf").start()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = environment(
            PORT=str(self.port), REDIS_URL=self.redis.url, BULKHOOK_SIGNATURE_KEY=KEY,
            BULKHOOK_TEST_OUTPUT=str(tmp / "handled.jsonl"), **settings,
        )  # fmt: skip
        self.log = open(tmp / "web.log", "wb")  # noqa: SIM115 - closed in close()
        self.web = self.start("web")
        wait_until_serving(f"{self.base}/readyz", self.web)
        self.conn = Redis.from_url(self.redis.url)

    def start(self, name: str) -> subprocess.Popen:
        return subprocess.Popen(procfile_command(name), cwd=REPO, env=self.env, stdout=self.log,
                                stderr=subprocess.STDOUT)  # fmt: skip

    def post(self, body: bytes) -> requests.Response:
        headers = {"Elements-Webhook-Signature": sign(KEY, body)}
        return requests.post(f"{self.base}/callbacks/bulk", data=body, headers=headers, timeout=30)

    def close(self) -> None:
        stop(self.web)
        self.redis.stop()
        self.conn.close()
        self.log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path, BULKHOOK_HANDLERS="tests.handlers.slow")
    yield running
    running.close()


def body() -> bytes:
    return json.dumps({"id": uuid.uuid4().hex, "status": "COMPLETED"}).encode()


def test_redis_killed_right_after_each_2xx_still_has_the_callback(server: Server) -> None:
    for _ in range(10):
        answer = server.post(body())
        assert answer.status_code == 202
        server.redis.stop(kill=True)  # SIGKILL, the moment the 2xx is in
        server.redis.start()
        conn = Redis.from_url(server.redis.url)
        delivery_id = answer.json()["delivery_id"]
        assert conn.hget(record_key(delivery_id), "state") == b"queued"
        assert conn.lpos(READY_KEY, delivery_id) is not None
        conn.close()


def test_sigterm_to_a_worker_lets_the_running_task_finish(server: Server) -> None:
    worker = server.start("worker")
    delivery_id = server.post(body()).json()["delivery_id"]
    wait_for(lambda: server.conn.hget(record_key(delivery_id), "state") == b"processing",
             what="the slow handler to start")  # fmt: skip

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=30) == 0
    assert server.conn.hget(record_key(delivery_id), "state") == b"done"


def test_sigterm_to_gunicorn_finishes_the_request_in_flight(server: Server) -> None:
    payload = body()
    head = (
        f"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n"
        f"Elements-Webhook-Signature: {sign(KEY, payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + payload[:10])  # the request is in, its body not yet whole
        time.sleep(0.5)
        server.web.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(payload[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202")
    assert server.web.wait(timeout=30) == 0
    delivery_id = json.loads(answer.partition(b"\r\n\r\n")[2])["delivery_id"]
    assert server.conn.hget(record_key(delivery_id), "state") == b"queued"


# Hostile input. Any answer below 500 is fine; a 5xx is a defect (Redis is up throughout).

_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300)
_header_names = st.sampled_from([
    "Elements-Webhook-Signature", "elements-webhook-signature", "Content-Type",
    "Elements-Webhook-Id", "Content-Encoding", "Transfer-Encoding", "X-Anything",
])  # fmt: skip
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
# Nearly valid bodies reach the intake and Redis, not just the parser: weighted up.
_near_valid = st.fixed_dictionaries(
    {"id": st.text(min_size=1) | st.integers(), "status": st.text(min_size=1)},
    optional={"message": st.dictionaries(st.text(), _json, max_size=3)},
).map(lambda value: json.dumps(value).encode())
_bodies = st.one_of(
    _near_valid,
    _near_valid,
    st.binary(max_size=70_000),
    _json.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"id": _json, "status": _json}, optional={"message": _json, "response": _json}
    ).map(lambda value: json.dumps(value).encode()),
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("fuzz"), BULKHOOK_MAX_BODY_BYTES="65536")
    yield running
    running.close()


def raw_request(port: int, method: str, path: str, headers: dict[str, str], payload: bytes,
                chunked: bool) -> int | None:  # fmt: skip
    """Send one request byte for byte, as a hostile client could; return the status or None."""
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        half = len(payload) // 2
        parts = [p for p in (payload[:half], payload[half:]) if p]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(payload)}")
        framed = payload
    request = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + framed
    answer = send_raw(port, request)
    status_line = answer.split(b"\r\n", 1)[0].split()
    return int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else None


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"]),
    path=st.sampled_from(
        ["/callbacks/bulk"] * 4 + ["/callbacks/events"] * 3 + ["/callbacks/x", "/", "/%ff"]
    ),
    headers=st.dictionaries(_header_names, _header_text, max_size=4),
    payload=_bodies,
    sign_it=st.sampled_from([True, True, True, False]),
    chunked=st.booleans(),
)
def test_hostile_requests_never_get_a_5xx(fuzz_server, method, path, headers, payload, sign_it,
                                          chunked) -> None:  # fmt: skip
    # Framing headers are the harness's to write; everything else is fair game.
    headers = {k: v for k, v in headers.items()
               if k.lower() not in ("transfer-encoding", "content-length")}  # fmt: skip
    if sign_it:
        headers["Elements-Webhook-Signature"] = sign(KEY, payload)

    status = raw_request(fuzz_server.port, method, path, headers, payload, chunked)

    # No status at all means the server closed a request it would not read (a body over the
    # limit sent in chunks); what matters then is that it is still serving, checked below.
    if status is not None:
        assert status < 500
    assert requests.get(fuzz_server.base + "/healthz", timeout=10).status_code == 200


def test_worker_killed_after_the_effect_runs_the_handler_again_and_the_effect_stays_once(
    tmp_path: Path,
) -> None:
    # The forking worker (the default): the work horse dies, the worker lives on.
    server = Server(tmp_path, BULKHOOK_HANDLERS="tests.handlers.effect_then_die",
                    BULKHOOK_RETRY_INTERVALS="1", BULKHOOK_WORKER_CLASS="fork")  # fmt: skip
    worker = server.start("worker")
    try:
        delivery_id = server.post(body()).json()["delivery_id"]
        wait_for(lambda: server.conn.hget(record_key(delivery_id), "state") == b"done",
                 what="the task to run again and finish")  # fmt: skip
        dedup_key = server.conn.hget(record_key(delivery_id), "dedup_key").decode()
    finally:
        stop(worker)
        server.close()
    runs = (tmp_path / "handled.jsonl").read_text().splitlines()
    assert len(runs) == 2  # the first run's process died before its success was recorded
    expected = idempotency_key(dedup_key)
    assert {json.loads(run)["key"] for run in runs} == {expected}
    assert [p.name for p in (tmp_path / "handled.jsonl.effects").iterdir()] == [expected]
