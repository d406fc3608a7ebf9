"""The web server's application: the two callback paths on asyncio, everything else Flask.

gunicorn runs it with uvicorn's worker (`deploy/gunicorn.conf.py`): HTTP is parsed in C
(httptools) and the Redis round trip is awaited, so one process takes many callbacks at once
without threads; the callbacks that reach Redis in the same turn of the event loop share one
round trip (`autopipeline.py`). Measured on 2 cores under wrk, a callback cost the web about
700 us of CPU under gunicorn's threaded worker, about 400 us here with one round trip each,
and 190-340 us with them shared, by machine and load (docs/performance.md).

The callback logic is callbacks.py's own steps (`check`, the intake script, `recorded`);
only reading the body and calling Redis differ. Flask (health, metrics, OpenAPI, dashboard)
runs behind a2wsgi, in a thread pool, as under a threaded WSGI server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from a2wsgi import WSGIMiddleware
from redis import RedisError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_list_header

from . import create_app, intake
from .autopipeline import IntakePipeline
from .callbacks import (
    PATHS,
    Answer,
    Seen,
    check,
    encode,
    internal_error,
    not_our_job,
    not_posted,
    observe,
    recorded,
    too_large,
    unavailable,
    unknown_job,
)
from .connection import connect_async
from .runtime import EXTENSION, Runtime

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

WORKER_CLASS = "service.web_worker.Worker"
"""The gunicorn worker class this app needs: uvicorn's (an ASGI app; gunicorn's own workers are
WSGI), within gunicorn's request limits (`web_worker.py`)."""

APP = "service.asgi:create_asgi_app()"
"""How gunicorn is told to load it."""

FLASK_THREADS = 8
"""Threads serving Flask's paths in each process (the dashboard, /metrics, health)."""


class ClientGone(Exception):
    """The sender hung up before its body was whole: there is nobody to answer."""


class AsgiRequest:
    """One request's headers, query and client address, from its ASGI scope."""

    def __init__(self, scope: Scope, trusted_proxies: int) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            # Repeated headers joined as WSGI servers join them.
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        self.headers = headers
        self.query_string = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        self.remote_addr: str | None = client[0] if client else None
        if trusted_proxies:
            # werkzeug's ProxyFix rule, as the Flask side applies it: the address that many
            # proxies back in X-Forwarded-For, or the peer's if the header is short.
            forwarded = parse_list_header(headers.get("x-forwarded-for", ""))
            if len(forwarded) >= trusted_proxies:
                self.remote_addr = forwarded[-trusted_proxies]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query(self, name: str) -> str:
        values = parse_qs(self.query_string).get(name)
        return values[0] if values else ""

    def content_length(self) -> int | None:
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None


class CallbackASGI:
    """ASGI app: the callback paths answered here, anything else passed to `inner`."""

    def __init__(self, runtime: Runtime, inner: Callable[..., Awaitable[None]]) -> None:
        self.runtime = runtime
        self.inner = inner
        self._intake: IntakePipeline | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] == "websocket":
            # Nothing here speaks WebSocket; closing before accepting is uvicorn's 403.
            return await send({"type": "websocket.close", "code": 1008})
        kind = PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None:
            return await self.inner(scope, receive, send)
        if scope["method"] != "POST":
            return await send_answer(send, not_posted())
        started = time.perf_counter()
        seen = Seen(kind)
        request = AsgiRequest(scope, self.runtime.settings.trusted_proxies)
        try:
            answer = await self.take(kind, request, receive, seen)
        except ClientGone:
            return
        except Exception:
            answer = internal_error(kind, seen)
        observe(seen, answer.code, started, request.remote_addr)
        await send_answer(send, answer)

    async def take(self, kind: str, request: AsgiRequest, receive: Receive, seen: Seen) -> Answer:
        """callbacks.take, awaiting the body and Redis."""
        parts = self.runtime
        settings = parts.settings
        try:
            held: list[bytes | bytearray] = [
                await _read_body(request, receive, settings.max_body_bytes)
            ]
        except RequestEntityTooLarge:
            return too_large(settings, seen)
        checked = check(parts, kind, request, held, seen)
        if isinstance(checked, Answer):
            return checked
        try:
            if settings.strict_jobs:
                # Two reads of the job's record: the blocking client, off the event loop.
                reason = await asyncio.to_thread(not_our_job, parts, checked.payload, request)
                if reason is not None:
                    return unknown_job(reason, seen)
            if self._intake is None:
                client = connect_async(settings)
                self._intake = IntakePipeline(client, intake.SCRIPT, settings)
                # The first write asks Redis its version (RQ's job fields): off the loop.
                write = await asyncio.to_thread(checked.write, parts)
            else:
                write = checked.write(parts)
            earlier = await self._intake.run(write)
        except RedisError as exc:
            return unavailable(exc, seen)
        return recorded(checked.payload, write.receipt(earlier), seen)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._intake is not None:
                    await self._intake.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(request: AsgiRequest, receive: Receive, limit: int) -> bytearray:
    """The raw body; RequestEntityTooLarge past `limit` bytes (at once if its Content-Length
    says so), chunked or not. One growing buffer: no second copy of a large body."""
    length = request.content_length()
    if length is not None and length > limit:
        raise RequestEntityTooLarge()
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestEntityTooLarge()
        if not message.get("more_body"):
            return body


async def send_answer(send: Send, answer: Answer) -> None:
    """Send `answer` as the response."""
    payload, headers = encode(answer)
    await send({
        "type": "http.response.start",
        "status": answer.code,
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": payload})


def create_asgi_app(test_config: Mapping[str, str] | None = None) -> CallbackASGI:
    """The web server's app (the Procfile's `web:` line): `create_app`'s Flask app, with the
    callback paths taken on asyncio in front of it."""
    flask_app = create_app(test_config)
    runtime: Runtime = flask_app.extensions[EXTENSION]
    # a2wsgi's hint is narrower than WSGI's start_response; Flask is a WSGI app.
    flask = WSGIMiddleware(flask_app, workers=FLASK_THREADS)  # type: ignore[arg-type]
    return CallbackASGI(runtime, flask)
