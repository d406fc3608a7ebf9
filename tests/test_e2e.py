"""The service as the Procfile runs it: gunicorn and `bulkhook worker` over real HTTP and Redis."""

from __future__ import annotations

import http.client
import json
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.signature import sign

from .conftest import KEY
from .handlers import read
from .processes import Stack, children, memory_kib, send_raw

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("stack"),
        KEY,
        BULKHOOK_HANDLERS="tests.handlers.record",
        BULKHOOK_MAX_BODY_BYTES=str(1024 * 1024),
    )
    yield running
    running.close()


def bulk_body(status: str = "COMPLETED") -> bytes:
    job_id = uuid.uuid4().hex[:8]
    return json.dumps({"id": job_id, "status": status, "fileFormat": "csv"}).encode()


def test_signed_callback_is_accepted_and_processed_by_the_worker(stack: Stack) -> None:
    body = bulk_body()
    response = stack.post(body)

    assert response.status_code == 202
    delivery_id = response.json()["delivery_id"]
    record = stack.wait_delivery_done(delivery_id)
    assert record[b"outcome"] == b"tests.handlers.record: recorded"
    assert [line["id"] for line in read(stack.output) if line["id"] == delivery_id] == [delivery_id]


def test_concurrent_duplicates_queue_exactly_one_task(stack: Stack) -> None:
    body = bulk_body()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: stack.post(body), range(48)))

    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 47 + [202]
    assert len({a.json()["delivery_id"] for a in answers}) == 1
    delivery_id = answers[0].json()["delivery_id"]
    stack.wait_delivery_done(delivery_id)
    assert [line["id"] for line in read(stack.output)].count(delivery_id) == 1


def test_rq_info_sees_the_queue_and_the_worker(stack: Stack) -> None:
    info = subprocess.run(
        ["rq", "info", "--url", stack.redis.url],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "bulkhook" in info
    assert "1 workers, 1 queues" in info


def test_raw_unicode_bytes_in_the_signature_header_get_401(stack: Stack) -> None:
    body = bulk_body()
    request = (
        b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Elements-Webhook-Signature: sha256=\xe2\x98\x83\xff\xfe\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    raw = send_raw(stack.port, request)
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert json.loads(payload)["status"] == "unauthorized"


def _chunked_post(stack: Stack, body: bytes) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    headers = {"Elements-Webhook-Signature": sign(KEY, body)}
    try:
        connection.request(
            "POST", "/callbacks/bulk", body=chunks, headers=headers, encode_chunked=True
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_chunked_body_within_the_limit_is_accepted(stack: Stack) -> None:
    body = json.dumps({"id": uuid.uuid4().hex, "status": "COMPLETED", "pad": "x" * 200_000})
    status, answer = _chunked_post(stack, body.encode())
    assert (status, answer["status"]) == (202, "accepted")


def test_chunked_body_over_the_limit_gets_413(stack: Stack) -> None:
    body = json.dumps({"id": uuid.uuid4().hex, "status": "COMPLETED", "pad": "x" * 1_100_000})
    try:
        status, answer = _chunked_post(stack, body.encode())
    except (ConnectionResetError, BrokenPipeError):
        pytest.fail("the server dropped the connection instead of answering 413")
    assert (status, answer["status"]) == (413, "too_large")


def test_bulkhook_send_posts_a_signed_body_and_prints_the_answer(stack: Stack, tmp_path) -> None:
    body_file = tmp_path / "body.json"
    body_file.write_bytes(bulk_body())

    def send(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bulkhook", "send", stack.base, str(body_file), *extra],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    first, again, wrong = send(), send(), send("--key", "wrong-key")
    assert (first.returncode, first.stdout.splitlines()[0]) == (0, "HTTP 202 Accepted")
    assert (again.returncode, json.loads(again.stdout.splitlines()[1])["status"]) == (
        0,
        "duplicate",
    )
    assert (wrong.returncode, wrong.stdout.splitlines()[0]) == (1, "HTTP 401 Unauthorized")


def test_redis_down_gets_503_with_retry_after_from_the_server_and_then_202(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The web server's own path (asyncio Redis client): Redis stopped is a JSON 503 with
    Retry-After, and the same callback is accepted once Redis is back."""
    own = Stack(tmp_path_factory.mktemp("outage"), KEY, BULKHOOK_REDIS_TIMEOUT_SECONDS="0.5")
    try:
        body = json.dumps({"id": f"outage-{uuid.uuid4().hex[:8]}", "status": "COMPLETED"})
        own.post(body.encode())  # the web's Redis client is made and connected
        own.redis.stop()
        refused = own.post(body.replace("outage-", "outage-2-").encode())
        own.redis.start()
        accepted = own.post(body.replace("outage-", "outage-2-").encode())
    finally:
        own.close()
    assert refused.status_code == 503
    assert refused.json()["status"] == "unavailable" and refused.headers["Retry-After"]
    assert accepted.status_code == 202


def test_a_large_body_costs_the_web_worker_at_most_about_two_copies_of_it(tmp_path) -> None:
    """What the process holds, C libraries included (tracemalloc, in test_asgi.py, sees only
    Python's allocations: hiredis's packing of the command, two more copies, went unseen)."""
    size = 8 * 1024 * 1024
    doc = json.dumps({"message": {"eventId": "big-rss", "raw": {"pad": ""}}})
    body = doc.replace('"pad": ""', '"pad": "' + "x" * (size - len(doc)) + '"').encode()
    running = Stack(tmp_path, KEY, WEB_CONCURRENCY="1")
    try:
        assert running.post(bulk_body()).status_code == 202  # the worker's client is connected
        [worker] = children(running.web.pid)
        # Resets the peak (VmHWM) to what is resident now.
        Path(f"/proc/{worker}/clear_refs").write_text("5")
        before = memory_kib(worker)["VmRSS"]

        answer = running.post(body, kind="events")

        peak = memory_kib(worker)["VmHWM"] - before
    finally:
        running.close()
    assert answer.status_code == 202
    assert peak * 1024 < 2.5 * size, f"{peak * 1024 / size:.2f} copies"
