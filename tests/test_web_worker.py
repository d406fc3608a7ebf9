"""The web's gunicorn worker keeps gunicorn's request bounds: real gunicorn, raw sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from service.signature import sign

from .conftest import KEY
from .processes import Stack, children, json_lines, port_is_open, send_raw, wait_for

pytestmark = pytest.mark.slow

IDLE_SECONDS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("bounds"),
        KEY,
        WEB_CONCURRENCY="1",
        GUNICORN_TIMEOUT=str(IDLE_SECONDS),
        GUNICORN_CMD_ARGS=(
            "--limit-request-line 200 --limit-request-fields 20 --limit-request-field_size 1000"
        ),
    )
    yield running
    running.close()


def exchange(stack: Stack, *parts: bytes, pause: float = 0.0) -> tuple[int | None, dict | None]:
    """Send `parts` (`pause` s apart) on one connection, then read until the server closes:
    the answer's status and JSON body, or (None, None) if it closed without answering."""
    raw = send_raw(stack.port, *parts, pause=pause)
    if not raw:
        return None, None
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


def signed_request(body: bytes, *headers: bytes) -> bytes:
    return (
        b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"Elements-Webhook-Signature: "
        + sign(KEY, body).encode()
        + b"\r\n"
        + b"".join(headers)
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )


def too_large(detail: str) -> dict[str, str]:
    return {"status": "request_header_fields_too_large", "detail": detail}


def warnings(stack: Stack) -> list[str]:
    """The web's warning lines so far."""
    return [line["message"] for line in json_lines(stack.tmp / "web.log")
            if line.get("level") == "WARNING"]  # fmt: skip


def warned_since(stack: Stack, before: int) -> list[str]:
    """The warning lines after the first `before`, once there is one (a refusal's lines are
    written before its answer)."""
    wait_for(lambda: len(warnings(stack)) > before, timeout=10, what="a warning line")
    return warnings(stack)[before:]


def ours(detail: str) -> list[str]:
    """A refusal's warning, one line: ours, saying which bound. uvicorn's own line when
    parsing stops ("Invalid HTTP request received.") would say nothing more."""
    return [f"Refused a request: {detail}."]


def bulk_body() -> bytes:
    return json.dumps({"id": uuid.uuid4().hex[:12], "status": "COMPLETED"}).encode()


def test_a_request_within_the_bounds_is_taken(stack: Stack) -> None:
    body = bulk_body()
    fields = [f"X-Field-{n}: {'v' * 900}\r\n".encode() for n in range(16)]
    assert exchange(stack, signed_request(body, *fields) + body)[0] == 202


def test_a_head_that_never_ends_is_refused_before_it_is_held(stack: Stack) -> None:
    """Without a bound on the whole head, 8 MB of header bytes on one connection are all
    taken in (a field is only whole, and counted, when its line ends)."""
    start = b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nX-Endless: "
    before = len(warnings(stack))
    status, answer = exchange(stack, start, *[b"x" * 65536] * 128)
    # The URL with room for method and version, 20 fields of 1000 bytes, each line with its
    # CRLF, and the blank line.
    head_bound = 200 + 24 + 2 + 20 * (1000 + 2) + 2
    assert (status, answer) == (431, too_large(f"request head is over {head_bound} bytes"))
    assert warned_since(stack, before) == ours(f"request head is over {head_bound} bytes")


def test_too_many_header_fields_get_431(stack: Stack) -> None:
    body = bulk_body()
    fields = [f"X-Field-{n}: v\r\n".encode() for n in range(20)]
    before = len(warnings(stack))
    status, answer = exchange(stack, signed_request(body, *fields) + body)
    assert (status, answer) == (431, too_large("request has over 20 header fields"))
    assert warned_since(stack, before) == ours("request has over 20 header fields")


def test_a_header_field_over_its_size_gets_431(stack: Stack) -> None:
    body = bulk_body()
    before = len(warnings(stack))
    status, answer = exchange(stack, signed_request(body, b"X-Big: " + b"v" * 1000 + b"\r\n"))
    assert (status, answer) == (431, too_large("header field X-Big is over 1000 bytes"))
    assert warned_since(stack, before) == ours("header field X-Big is over 1000 bytes")


def test_a_url_over_the_request_line_limit_gets_414(stack: Stack) -> None:
    request = b"POST /callbacks/bulk?token=" + b"t" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    before = len(warnings(stack))
    status, answer = exchange(stack, request)
    assert (status, answer) == (414, {"status": "request_uri_too_long",
                                      "detail": "request URL is over 200 bytes"})  # fmt: skip
    assert warned_since(stack, before) == ours("request URL is over 200 bytes")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
        b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nX-Bad: \x7f\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["negative-length", "bad-chunk", "control-character", "tls-hello"],
)
def test_what_is_not_http_gets_a_json_400(stack: Stack, request_bytes: bytes) -> None:
    before = len(warnings(stack))
    status, answer = exchange(stack, request_bytes)
    assert (status, answer) == (400, {"status": "malformed",
                                      "detail": "request is not valid HTTP/1.1"})  # fmt: skip
    # What httptools cannot parse keeps uvicorn's line, alone.
    assert warned_since(stack, before) == ["Invalid HTTP request received."]


def test_uvicorns_lines_carry_no_terminal_colours(stack: Stack) -> None:
    """uvicorn logs some lines with a `color_message` besides the message, for its own
    coloured formatter: the JSON lines keep the message only."""
    lines = json_lines(stack.tmp / "web.log")
    started = [line for line in lines if line["message"].startswith("Started server process")]
    assert started and all("color_message" not in line for line in started)
    assert not any("\x1b" in json.dumps(line, ensure_ascii=False) for line in lines)


def test_senders_that_go_silent_are_answered_408_or_closed(stack: Stack) -> None:
    body = bulk_body()
    head = signed_request(body)
    stalls = {
        "before any byte": (),
        "in the head": (head[:40],),
        "in the body": (head + body[:5],),
    }
    with ThreadPoolExecutor(len(stalls)) as pool:
        answers = pool.map(lambda parts: exchange(stack, *parts), stalls.values())
        outcomes = dict(zip(stalls, answers, strict=True))
    timed_out = {"status": "request_timeout",
                 "detail": f"no part of the request came for {IDLE_SECONDS} s"}  # fmt: skip
    assert outcomes == {
        "before any byte": (None, None),
        "in the head": (408, timed_out),
        "in the body": (408, timed_out),
    }


def test_a_slow_sender_that_keeps_sending_is_not_cut_off(stack: Stack) -> None:
    """Its request takes twice the idle bound, with no pause as long as the bound."""
    body = bulk_body()
    request = signed_request(body) + body
    parts = [request[i : i + 16] for i in range(0, len(request), 16)]
    pause = 2 * IDLE_SECONDS / len(parts)
    assert exchange(stack, *parts, pause=pause)[0] == 202


def test_a_websocket_upgrade_is_handed_over_and_refused(stack: Stack) -> None:
    """The bounded protocol hands an upgrade to uvicorn's WebSocket protocol, and the app
    refuses it (403 before accepting): nothing answers callbacks over WebSocket."""
    request = (
        b"GET /callbacks/bulk HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = send_raw(stack.port, request)
    assert answer.startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize(("level", "callback_lines"), [("info", "app"), ("warning", "access")])
def test_a_callback_has_one_line_the_apps_or_else_the_access_line(
    tmp_path, level: str, callback_lines: str
) -> None:
    """While the app logs its callbacks (INFO), uvicorn is not asked for an access line for
    them; with the app's INFO lines off, the access line is the callback's only one. Other
    requests (a GET of a callback path: 405, health) keep theirs either way."""
    quiet = Stack(tmp_path, KEY, WEB_CONCURRENCY="1", GUNICORN_LOG_LEVEL=level)
    try:
        body = bulk_body()
        assert quiet.post(body).status_code == 202
        assert requests.get(f"{quiet.base}/callbacks/bulk", timeout=10).status_code == 405
        assert requests.get(f"{quiet.base}/healthz", timeout=10).status_code == 200

        def lines() -> list[dict] | None:
            found = json_lines(tmp_path / "web.log")
            return found if any(line.get("path") == "/healthz" for line in found) else None

        logged = wait_for(lines, timeout=10, what="the health check's access line")
    finally:
        quiet.close()
    access = [(line["method"], line["path"]) for line in logged
              if line.get("logger") == "uvicorn.access"]  # fmt: skip
    app = [line for line in logged if line.get("answer") == "accepted"]
    assert ("GET", "/callbacks/bulk") in access and ("GET", "/healthz") in access
    if callback_lines == "app":
        assert ("POST", "/callbacks/bulk") not in access and len(app) == 1
    else:
        assert ("POST", "/callbacks/bulk") in access and not app


def test_a_request_over_worker_connections_gets_503_and_is_taken_once_they_close(
    tmp_path,
) -> None:
    """uvicorn's worker takes any number of connections at once; this one keeps gunicorn's
    worker_connections. Over it, a request is answered 503 (JSON, Retry-After) before its body
    is read, on a connection that stays usable; nothing is recorded; the same callback is
    taken once connections close."""
    limited = Stack(tmp_path, KEY, WEB_CONCURRENCY="1", GUNICORN_CMD_ARGS="--worker-connections 2")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(limited.close)
        held = [socket.create_connection(("127.0.0.1", limited.port), timeout=30) for _ in range(2)]
        for sock in held:
            cleanup.enter_context(sock)
            sock.sendall(b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\n")  # heads under way
        body = bulk_body()
        with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as third:
            # Kept alive (signed_request asks to close), to show the connection stays usable.
            keep_alive = signed_request(body).replace(b"Connection: close\r\n", b"")
            third.sendall(keep_alive + body)
            head, payload = read_answer(third)
            # The connection was kept: a second request on it gets its own answer.
            third.sendall(b"GET /callbacks/bulk HTTP/1.1\r\nHost: x\r\n\r\n")
            again, _ = read_answer(third)
        assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 10" in head.lower()
        assert payload["status"] == "unavailable" and "worker_connections" in payload["detail"]
        assert again.startswith(b"HTTP/1.1 503 ")
        assert not limited.conn.keys("bulkhook:delivery:*")
        for sock in held:
            sock.close()

        def taken() -> int | None:
            status = limited.post(body).status_code
            return status if status != 503 else None

        assert wait_for(taken, timeout=10, what="a 2xx once the connections closed") == 202


def read_answer(sock: socket.socket) -> tuple[bytes, dict]:
    """One answer with a Content-Length from a kept-alive connection: its head and JSON body
    (AssertionError if the server closes the connection first)."""

    def more() -> bytes:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection before its answer was whole"
        return chunk

    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += more()
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:")))  # fmt: skip
    while len(rest) < length:
        rest += more()
    return head, json.loads(rest[:length])


def test_a_worker_whose_master_was_killed_stops_and_frees_the_port(tmp_path) -> None:
    """gunicorn's own workers stop when their master is gone; uvicorn's served on, holding
    the port, with nothing to restart them."""
    orphaned = Stack(tmp_path, KEY, WEB_CONCURRENCY="1", GUNICORN_TIMEOUT=str(IDLE_SECONDS))
    [worker] = children(orphaned.web.pid)
    try:
        os.kill(orphaned.web.pid, signal.SIGKILL)
        orphaned.web.wait()

        def stopped() -> bool:
            return not running(worker) and not port_is_open(orphaned.port)

        wait_for(stopped, timeout=20, what="the orphaned worker to stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)  # if it did not stop, it must not outlive the test
        orphaned.close()


def running(pid: int) -> bool:
    """Whether `pid` is alive: not gone, and not a zombie no one has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
