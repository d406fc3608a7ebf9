"""The web server's app (service/asgi.py), spoken to in the ASGI protocol as uvicorn speaks it,
on uvloop as uvicorn runs it (asyncio's own loop copies a large write whole, uvloop does not),
with a real Redis behind it. The real server runs it in tests/test_e2e.py and the others that
start the Procfile's web line; these cover what those do not reach."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvloop
from redis import Redis

from service import drain, intake, jobs
from service.asgi import create_asgi_app
from service.delivery import record_key
from service.embedded_redis import free_port
from service.signature import sign

from .conftest import BULK_BODY, KEY

Call = Callable[..., Awaitable[tuple[int, dict[str, str], dict[str, Any]]]]


def caller(app: Any) -> Call:
    """A function that sends one request to `app` and returns status, headers and JSON body."""

    async def call(
        method: str,
        path: str,
        body: bytes = b"",
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        piece: int = 64 * 1024,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        # Views, not copies: a test that measures memory counts only the app's own.
        view = memoryview(body)
        pieces = [view[i : i + piece] for i in range(0, len(body), piece)] or [view]
        messages = [{"type": "http.request", "body": p, "more_body": n < len(pieces) - 1}
                    for n, p in enumerate(pieces)]  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": query.encode(), "root_path": "",
                 "headers": [(k.lower().encode(), v.encode())
                             for k, v in (headers or {}).items()],
                 "client": ("10.0.0.1", 50000), "server": ("127.0.0.1", 8000)}  # fmt: skip
        await app(scope, receive, send)
        start = sent[0]
        answer = b"".join(m.get("body", b"") for m in sent[1:])
        names = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], names, json.loads(answer)

    return call


async def shut_down(app: Any) -> None:
    """The lifespan protocol's end, as uvicorn runs it when a worker stops: the app closes
    its Redis client."""
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def signed(body: bytes, **more: str) -> dict[str, str]:
    return {"Elements-Webhook-Signature": sign(KEY, body), "Content-Type": "application/json",
            "Content-Length": str(len(body)), **more}  # fmt: skip


def test_callbacks_are_recorded_and_other_paths_go_to_flask(config, conn) -> None:
    app = create_asgi_app(config)
    call = caller(app)

    async def scenario():
        first = await call("POST", "/callbacks/bulk", BULK_BODY, headers=signed(BULK_BODY))
        again = await call("POST", "/callbacks/bulk", BULK_BODY, headers=signed(BULK_BODY))
        unsigned = await call("POST", "/callbacks/bulk", BULK_BODY)
        method = await call("GET", "/callbacks/bulk")
        health = await call("GET", "/healthz")
        await shut_down(app)
        return first, again, unsigned, method, health

    first, again, unsigned, method, health = uvloop.run(scenario())

    assert first[0] == 202 and first[2]["status"] == "accepted"
    assert conn.hget(record_key(first[2]["delivery_id"]), "body") == BULK_BODY
    assert again[0] == 200 and again[2]["delivery_id"] == first[2]["delivery_id"]
    assert unsigned[0] == 401 and unsigned[2]["status"] == "unauthorized"
    assert method[0] == 405 and method[1]["allow"] == "POST"
    assert health[0] == 200 and health[2]["status"] == "ok"


def test_bodies_over_the_limit_get_413_whether_announced_or_chunked(config, conn) -> None:
    config["BULKHOOK_MAX_BODY_BYTES"] = "1024"
    app = create_asgi_app(config)
    call = caller(app)
    body = json.dumps({"id": "1", "status": "COMPLETED", "pad": "x" * 2000}).encode()

    async def scenario():
        announced = await call("POST", "/callbacks/bulk", body, headers=signed(body))
        chunked = await call("POST", "/callbacks/bulk", body, piece=100,
                             headers={"Elements-Webhook-Signature": sign(KEY, body)})  # fmt: skip
        await shut_down(app)
        return announced, chunked

    for status, _, answer in uvloop.run(scenario()):
        assert status == 413 and answer["status"] == "too_large"
    assert list(conn.scan_iter("bulkhook:delivery:*")) == []


def test_strict_mode_and_trusted_proxies(config, conn) -> None:
    config["BULKHOOK_STRICT_JOBS"] = "true"
    config["BULKHOOK_TRUSTED_PROXIES"] = "1"
    token = jobs.new_token()
    jobs.record_started(conn, "777", object_name="contacts", direction=jobs.UPLOAD,
                        callback=jobs.callback_url("http://hooks.example", token),
                        token=token)  # fmt: skip
    app = create_asgi_app(config)
    call = caller(app)
    body = b'{"id": "777", "status": "COMPLETED"}'
    forwarded = signed(body, **{"X-Forwarded-For": "203.0.113.7, 198.51.100.2"})

    async def scenario():
        unknown = await call("POST", "/callbacks/bulk", BULK_BODY, headers=signed(BULK_BODY))
        wrong = await call("POST", "/callbacks/bulk", body, query="token=nope", headers=forwarded)
        right = await call("POST", "/callbacks/bulk", body, query=f"token={token}",
                           headers=forwarded)  # fmt: skip
        await shut_down(app)
        return unknown, wrong, right

    unknown, wrong, right = uvloop.run(scenario())

    assert unknown[0] == 404 and unknown[2]["status"] == "unknown_job"
    assert wrong[0] == 404 and "token" in wrong[2]["detail"]
    assert right[0] == 202
    # One proxy trusted: the address it saw, not the peer's, and not the forged first entry.
    assert conn.hget(record_key(right[2]["delivery_id"]), "remote_addr") == b"198.51.100.2"


def test_a_large_body_is_held_at_most_twice_while_it_is_taken(config, conn) -> None:
    """As through the WSGI path (test_receiver): bytes, text and document never all alive."""
    size = 8 * 1024 * 1024
    doc = json.dumps({"message": {"eventId": "big-asgi", "raw": {"pad": ""}}})
    body = doc.replace('"pad": ""', '"pad": "' + "x" * (size - len(doc)) + '"').encode()
    app = create_asgi_app(config)
    call = caller(app)
    headers = signed(body)

    async def scenario():
        await call("POST", "/callbacks/bulk", BULK_BODY, headers=signed(BULK_BODY))  # warm up
        tracemalloc.start()
        try:
            answer = await call("POST", "/callbacks/events", body, headers=headers)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        await shut_down(app)
        return answer, peak

    (status, _, answer), peak = uvloop.run(scenario())

    assert status == 202
    assert peak < 2.1 * size, f"{peak / size:.2f} copies"
    assert conn.hget(record_key(answer["delivery_id"]), "body") == body


def test_a_websocket_is_refused(config) -> None:
    app = create_asgi_app(config)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": "/callbacks/bulk",
             "headers": [], "query_string": b""}  # fmt: skip
    uvloop.run(app(scope, receive, send))

    assert sent == [{"type": "websocket.close", "code": 1008}]


def _bulk(job: str, pad: int = 0) -> bytes:
    """A bulk callback; `pad` bytes more make it one whose body is held out of Lua."""
    document = {"id": job, "status": "COMPLETED"}
    if pad:
        document["pad"] = f"{job}-" + "x" * pad
    return json.dumps(document).encode()


HELD = intake.HELD_BODY_BYTES + 1
"""Padding that makes a body one the intake holds out of its script."""
SIZES = ("small", "held")


def _post_at_once(config: dict[str, str], bodies: list[bytes]) -> list:
    """Send every body at once to a new app; its answers in the same order."""
    app = create_asgi_app(config)
    call = caller(app)

    async def scenario():
        answers = await asyncio.gather(
            *(call("POST", "/callbacks/bulk", body, headers=signed(body)) for body in bodies)
        )
        await shut_down(app)  # a loop closed with the client open hangs in uvloop's close
        return answers

    return uvloop.run(scenario())


def test_concurrent_callbacks_share_a_round_trip_and_each_gets_its_own_answer(config, conn) -> None:
    app = create_asgi_app(config)
    call = caller(app)
    bodies = [_bulk(f"job-{n}") for n in range(20)] + [_bulk("job-0")]

    async def scenario():
        await call("POST", "/callbacks/bulk", BULK_BODY, headers=signed(BULK_BODY))  # warm up
        before = conn.info("stats")["total_reads_processed"]
        answers = await asyncio.gather(
            *(call("POST", "/callbacks/bulk", body, headers=signed(body)) for body in bodies)
        )
        reads = conn.info("stats")["total_reads_processed"] - before
        await shut_down(app)
        return answers, reads

    answers, reads = uvloop.run(scenario())

    # 21 script calls reached Redis in far fewer reads of its sockets than one each: one
    # pipeline of some 30 KiB, which Redis reads 16 KiB at a time (and the two INFO above).
    assert reads <= 10, reads
    statuses = [(status, answer["status"]) for status, _, answer in answers]
    assert statuses == [(202, "accepted")] * 20 + [(200, "duplicate")]
    ids = [answer["delivery_id"] for _, _, answer in answers]
    assert len(set(ids[:20])) == 20 and ids[20] == ids[0]
    for body, delivery_id in zip(bodies[:20], ids[:20], strict=True):
        assert conn.hget(record_key(delivery_id), "body") == body


@pytest.mark.parametrize("size", SIZES)
def test_the_intake_script_is_loaded_again_after_redis_forgot_it(config, conn, size) -> None:
    """A held body was written (with its expiry) before its script failed: the run again
    keeps it for good."""
    pad = HELD if size == "held" else 0
    a, b = _bulk("a", pad), _bulk("b", pad)
    app = create_asgi_app(config)
    call = caller(app)

    async def scenario():
        first = await call("POST", "/callbacks/bulk", a, headers=signed(a))
        conn.script_flush()  # as after a restart without persistence, or a failover
        second = await call("POST", "/callbacks/bulk", b, headers=signed(b))
        await shut_down(app)
        return first, second

    first, second = uvloop.run(scenario())

    assert first[0] == second[0] == 202
    assert conn.hget(record_key(second[2]["delivery_id"]), "body") == b
    assert conn.ttl(record_key(second[2]["delivery_id"])) == -1  # no expiry: kept until done


class ReplyLosingRelay:
    """A TCP relay to Redis that, once armed, passes on the next request that carries an
    EVALSHA, so Redis runs it, and then closes that connection instead of passing on the
    reply: what the web sees when a connection drops between its write and the answer."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        doomed = threading.Event()
        replies = threading.Thread(target=self._pump, args=(upstream, client, doomed, False))
        replies.start()
        self._pump(client, upstream, doomed, True)
        replies.join()
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket, doomed: threading.Event,
              requests: bool) -> None:  # fmt: skip
        try:
            while data := source.recv(65536):
                if requests and b"EVALSHA" in data and self.armed.is_set():
                    if not self.lost.is_set():
                        doomed.set()  # before Redis can answer
                        self.lost.set()
                elif not requests and doomed.is_set():
                    break  # the reply, lost
                sink.sendall(data)
        except OSError:
            pass
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("size", SIZES)
def test_a_reply_lost_with_its_connection_is_read_again_on_a_new_one(config, conn, size) -> None:
    """The round trip takes the client's retry: the script runs again on a new connection and
    answers with the delivery's own id, so the callback gets its 202 (not a 503, and not
    "duplicate" of itself), and one record; a held body written again is kept for good."""
    pad = HELD if size == "held" else 0
    redis = urlsplit(config["REDIS_URL"])
    relay = ReplyLosingRelay(redis.port or 6379)
    config["REDIS_URL"] = redis._replace(netloc=f"127.0.0.1:{relay.port}").geturl()
    app = create_asgi_app(config)
    call = caller(app)

    async def scenario():
        first = await call("POST", "/callbacks/bulk", _bulk("a"), headers=signed(_bulk("a")))
        relay.armed.set()
        body = _bulk("b", pad)
        second = await call("POST", "/callbacks/bulk", body, headers=signed(body))
        await shut_down(app)
        return first, second

    try:
        first, second = uvloop.run(scenario())
    finally:
        relay.close()

    assert first[0] == 202 and relay.lost.is_set()
    assert (second[0], second[2]["status"]) == (202, "accepted"), second
    delivery_id = second[2]["delivery_id"]
    assert conn.get("bulkhook:seen:bulk:b:COMPLETED") == delivery_id.encode()
    assert conn.hget(record_key(delivery_id), "body") == _bulk("b", pad)
    assert conn.ttl(record_key(delivery_id)) == -1
    assert len(conn.keys("bulkhook:delivery:*")) == 2


def test_every_callback_of_a_failed_round_trip_gets_503(config) -> None:
    config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    config["BULKHOOK_REDIS_TIMEOUT_SECONDS"] = "0.5"
    bodies = [_bulk(f"job-{n}") for n in range(5)]

    for status, headers, answer in _post_at_once(config, bodies):
        assert status == 503 and answer["status"] == "unavailable"
        assert headers["retry-after"]


@pytest.mark.parametrize("size", SIZES)
def test_too_few_replicas_fail_each_write_of_the_round_trip(config, conn, size) -> None:
    """WAIT once at the end of the pipeline: with no replica, every callback in it gets 503,
    and each write did reach the primary (the sender's retry is a duplicate)."""
    config["BULKHOOK_REDIS_MIN_REPLICAS"] = "1"
    config["BULKHOOK_REDIS_REPLICA_WAIT_MS"] = "50"
    bodies = [_bulk(f"job-{n}", HELD if size == "held" and n else 0) for n in range(3)]

    answers = _post_at_once(config, bodies)

    assert [(status, answer["status"]) for status, _, answer in answers] == [
        (503, "unavailable")
    ] * 3
    retried = [
        conn.get(f"bulkhook:seen:bulk:job-{n}:COMPLETED") for n in range(3)
    ]  # what a retry finds
    assert all(retried)


def test_a_write_whose_reply_was_lost_is_not_its_own_duplicate() -> None:
    """redis-py runs a command again after a lost connection; if the first run did write,
    the script answers with the delivery's own id, which is no earlier delivery."""
    write = intake.Write("d1", keys=[], args=[])

    assert write.receipt(b"d1") == intake.Receipt("d1", duplicate=False)
    assert write.receipt(b"d0") == intake.Receipt("d0", duplicate=True)
    assert write.receipt(None) == intake.Receipt("d1", duplicate=False)


class Monitor:
    """Every command Redis runs, as MONITOR shows it: `[lua]` for those a script called. On a
    client of its own: MONITOR takes its connection for good."""

    def __init__(self, url: str) -> None:
        self.lines: list[str] = []
        self._client = Redis.from_url(url)
        self._monitor = self._client.monitor().__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        with contextlib.suppress(Exception):  # ends when stop() closes the connection
            for command in self._monitor.listen():
                self.lines.append(f"[{command['client_type']}] {command['command']}")

    def stop(self, conn: Redis) -> list[str]:
        """The lines up to now: an ECHO marks the end, then the connection is closed."""
        conn.echo("monitor-end")
        for _ in range(500):
            if any("monitor-end" in line for line in self.lines):
                break
            threading.Event().wait(0.01)
        self._monitor.connection.disconnect()
        self._thread.join(timeout=5)
        self._client.close()
        return self.lines


def test_a_large_body_never_goes_through_lua_on_its_way_in_or_out(config, conn) -> None:
    """Redis 7 hashes every string that enters a script byte by byte (redis/redis#9449):
    a held body is written by a command of its own, dropped again for a duplicate, and a
    drain reads it outside its script."""
    body, again = _bulk("big", HELD), _bulk("big", HELD + 1)  # the same job and status
    monitor = Monitor(config["REDIS_URL"])
    app = create_asgi_app(config)
    call = caller(app)

    async def scenario():
        first = await call("POST", "/callbacks/bulk", body, headers=signed(body))
        second = await call("POST", "/callbacks/bulk", again, headers=signed(again))
        await shut_down(app)
        return first, second

    first, second = uvloop.run(scenario())
    taken = drain.take(conn, "drain-big", 10)
    lines = monitor.stop(conn)

    assert (first[0], second[0], second[2]["status"]) == (202, 200, "duplicate")
    delivery_id = first[2]["delivery_id"]
    assert [(i, b) for i, _, b in taken] == [(delivery_id, body)]
    assert conn.keys("bulkhook:delivery:*") == [record_key(delivery_id).encode()]
    scripted = [line for line in lines if line.startswith("[lua]")]
    assert scripted, "the intake and take scripts ran"
    assert not [line for line in scripted if "big-x" in line or "HGETALL" in line]
    assert [line for line in lines if "big-x" in line and line.startswith("[tcp]")]


def test_a_held_body_is_written_again_by_the_sync_path_as_the_script_left_it(config, conn):
    """The blocking client's round trip (callbacks.py's path): a new delivery's body is kept
    for good; run again with the same delivery id (the client's retry after a lost answer)
    once a worker processed it, the record stays as the success write left it."""
    from service import create_app, payloads
    from service.runtime import EXTENSION

    parts = create_app(config).extensions[EXTENSION]
    body = _bulk("sync", HELD)
    payload = payloads.parse("bulk", body.decode())
    write = intake.prepare(parts.queue, parts.settings, payload, body, signed=True,
                           webhook_id=None)  # fmt: skip
    key = record_key(write.delivery_id)

    assert intake.run(parts.accept_script, write, parts.settings) is None
    assert (conn.hget(key, "body"), conn.ttl(key)) == (body, -1)
    # What the success write does (successes.py): done, no body, kept for the de-dup TTL.
    conn.hset(key, "state", "done")
    conn.hdel(key, "body")
    conn.expire(key, parts.settings.dedup_ttl_seconds)
    again = intake.run(parts.accept_script, write, parts.settings)

    assert again == write.delivery_id.encode()
    assert conn.hget(key, "body") is None
    assert 0 < conn.ttl(key) <= parts.settings.dedup_ttl_seconds
