"""The web's gunicorn worker: uvicorn's, with the bounds gunicorn's own workers keep.

uvicorn's httptools protocol takes a request head of any size (measured: 96 MB of headers
on one connection grew a web worker by 120 MB), waits for ever on a sender that stops in the
middle of a request or never starts one, and refuses what it cannot parse in plain text.
Here the head is held to gunicorn's `limit_request_line`, `limit_request_fields` and
`limit_request_field_size` (414, 431), a sender silent for gunicorn's `timeout` in the middle
of a request gets 408 (one that never sent a byte is closed), and these refusals are JSON
like every other answer, with 400 for what is not HTTP/1.1. uvicorn's worker serves any
number of connections at once; here a request that begins while more than gunicorn's
`worker_connections` are open gets 503. And, as gunicorn's own workers do, a worker stops when
its master is gone. A callback the app logs itself gets no access line, and a refusal
of ours one warning line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, NoReturn

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from .asgi import App, Receive, Scope, Send, send_answer
from .callbacks import PATHS, Answer, encode, reply
from .config import RETRY_AFTER_SECONDS
from .errors import status_word
from .logs import app_logs_callbacks


@dataclass(frozen=True)
class Bounds:
    """What one request may take of a web worker, and how many connections the worker
    serves at once; 0 means no bound, as in gunicorn."""

    request_line: int
    fields: int
    field_size: int
    idle_seconds: float
    connections: int = 0

    @classmethod
    def of(cls, cfg: Any) -> Bounds:
        """The bounds gunicorn's settings (`cfg`) give its own workers."""
        return cls(cfg.limit_request_line, cfg.limit_request_fields,
                   cfg.limit_request_field_size, cfg.timeout,
                   cfg.worker_connections)  # fmt: skip

    @property
    def head(self) -> int:
        """The most bytes a head within the other bounds can take, CRLFs included (0: any)."""
        if not (self.request_line and self.fields and self.field_size):
            return 0
        line = self.request_line + _METHOD_AND_VERSION + 2
        return line + self.fields * (self.field_size + 2) + 2


_METHOD_AND_VERSION = 24
"""Room for the method and " HTTP/1.1" beside the URL, which `request_line` bounds."""


class Refused(Exception):
    """Raised from a parser callback: httptools stops there, uvicorn sends its 400."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol within `bounds` (the module's docstring says why)."""

    bounds: ClassVar[Bounds]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refusal: Answer | None = None
        # Where uvicorn takes a logging.Logger, a stand-in with the same methods.
        self.logger = _OwnRefusalsSaidOnce(self.logger, self)  # type: ignore[assignment]
        self._head_bytes = 0
        self._fields = 0
        self._in_head = False
        # Waiting for a request to begin (a new connection) or to end; after a response,
        # uvicorn's keep-alive timeout closes an idle connection instead.
        self._incomplete = True
        self._heard = self.loop.time()
        self._idle_check = (
            self.loop.call_later(self.bounds.idle_seconds, self._check_idle)
            if self.bounds.idle_seconds
            else None
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_check is not None:
            self._idle_check.cancel()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection becomes the WebSocket protocol's: its idleness is no longer ours.
        if self._idle_check is not None:
            self._idle_check.cancel()
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        self._heard = self.loop.time()
        super().data_received(data)
        # Counted after parsing: a chunk in which the head ended is partly body, and the
        # fields' own bounds have checked that head.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self.bounds.head and self._head_bytes > self.bounds.head:
                self._refuse(431, f"request head is over {self.bounds.head} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._incomplete = True, True
        self._head_bytes = self._fields = 0

    def on_url(self, url: bytes) -> None:
        limit = self.bounds.request_line
        if limit and len(self.url) + len(url) > limit:
            self._stop_parsing(414, f"request URL is over {limit} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        bounds = self.bounds
        if bounds.fields and self._fields > bounds.fields:
            self._stop_parsing(431, f"request has over {bounds.fields} header fields")
        if bounds.field_size and len(name) + len(value) > bounds.field_size:
            field = name.decode("latin-1")[:64]
            self._stop_parsing(431, f"header field {field} is over {bounds.field_size} bytes")
        super().on_header(name, value)

    def _stop_parsing(self, code: int, detail: str) -> NoReturn:
        """From a parser callback: httptools stops, and uvicorn's 400 becomes this refusal."""
        self._refusal = _refusal(code, detail)
        raise Refused

    def on_headers_complete(self) -> None:
        self._in_head = False
        limit = self.bounds.connections
        if limit and len(self.connections) > limit:
            self._refuse_over(limit)
            return
        super().on_headers_complete()
        scope = self.scope
        if scope.get("path") in PATHS and scope["method"] == "POST" and app_logs_callbacks():
            # The app's own line has what the access line has (path, answer, status code,
            # source, duration) and the ids besides. Asking here, rather than dropping the
            # record in a filter, saves making it: 2.5% of the web's CPU under load (py-spy).
            self.cycle.access_log = False

    def _refuse_over(self, limit: int) -> None:
        """Answer 503 to the request whose head just ended: over `limit` connections.

        Before its body is read (each request under way may hold up to
        BULKHOOK_MAX_BODY_BYTES), but as a request like any other: uvicorn reads past the body
        and the connection stays open, so the sender reads the answer whole (closing with its
        body unread could reset the connection under it). It retries after Retry-After.
        """
        self.logger.warning("Refused a request: over %d connections.", limit)
        app, self.app = self.app, _over_connections(limit)
        try:
            super().on_headers_complete()  # runs the request with self.app
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._incomplete = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's refusal of a request httptools could not parse, or one of ours, as JSON."""
        if self._refusal is not None:
            self.logger.warning("Refused a request: %s.", self._refusal.document["detail"])
        self._refuse_with(self._refusal or _refusal(400, "request is not valid HTTP/1.1"))

    def _refuse(self, code: int, detail: str) -> None:
        self.logger.warning("Refused a request: %s.", detail)
        self._refuse_with(_refusal(code, detail))

    def _refuse_with(self, answer: Answer) -> None:
        payload, headers = encode(answer)
        head = [f"HTTP/1.1 {answer.code} {HTTPStatus(answer.code).phrase}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers]
        head.append("Connection: close\r\n\r\n")
        self.transport.write("".join(head).encode("latin-1") + payload)
        self.transport.close()

    def _check_idle(self) -> None:
        if self.transport.is_closing():
            return
        idle = self.bounds.idle_seconds
        silent = self.loop.time() - self._heard
        if not self._incomplete or self.flow.read_paused:
            # Idle between requests (uvicorn's keep-alive timeout is for that), or reading
            # held back by this side, not the sender.
            self._idle_check = self.loop.call_later(idle, self._check_idle)
        elif silent < idle:
            self._idle_check = self.loop.call_later(idle - silent, self._check_idle)
        elif self.scope is None:
            self.transport.close()  # a connection that never began a request
        elif not self._in_head and self.cycle.response_started:
            self.transport.close()  # answered already (a 413 before the whole body)
        else:
            self._refuse(408, f"no part of the request came for {silent:.0f} s")


class _OwnRefusalsSaidOnce:
    """uvicorn's logger for one connection, without the line uvicorn writes when parsing
    stops ("Invalid HTTP request received.") if it stopped for one of our bounds: our own
    line, written next, says which. What httptools itself cannot parse keeps uvicorn's line."""

    def __init__(self, logger: logging.Logger, protocol: BoundedHttpToolsProtocol) -> None:
        self._logger = logger
        self._protocol = protocol

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if msg == _PARSING_STOPPED and self._protocol._refusal is not None:
            return
        self._logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


_PARSING_STOPPED = "Invalid HTTP request received."
"""uvicorn's warning when httptools stops (HttpToolsProtocol.data_received)."""


def _refusal(code: int, detail: str) -> Answer:
    retry = [("Retry-After", str(RETRY_AFTER_SECONDS))] if code == 503 else None
    return reply(code, status_word(code), detail, headers=retry)


def _over_connections(limit: int) -> App:
    """An ASGI app that answers 503: the worker is serving more than `limit` connections."""
    answer = _refusal(503, f"this web process is serving more than its {limit} connections "
                           "(gunicorn's worker_connections); retry later")  # fmt: skip

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send_answer(send, answer)

    return refuse


def bounded_protocol(bounds: Bounds) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with `bounds`: uvicorn makes one instance per connection."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"bounds": bounds})


class Worker(UvicornWorker):
    """uvicorn's gunicorn worker, speaking `BoundedHttpToolsProtocol` within gunicorn's limits."""

    # uvicorn's proxy-headers middleware wraps every request even though gunicorn's
    # forwarded_allow_ips (""), which it follows, means it never acts: BULKHOOK_TRUSTED_PROXIES
    # decides which X-Forwarded-For to believe (asgi.py, and ProxyFix on the Flask side).
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "proxy_headers": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's Config takes a protocol class for `http` and resolves it at start.
        self.config.http = bounded_protocol(Bounds.of(self.cfg))

    async def callback_notify(self) -> None:
        """The heartbeat uvicorn sends every `timeout / 2` s; first, gunicorn's own workers'
        check: a worker whose master is gone (killed, not stopped) stops, rather than serve
        on unsupervised, holding the port a new master needs."""
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful stop
            return
        await super().callback_notify()
