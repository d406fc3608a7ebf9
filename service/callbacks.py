"""The two callback endpoints: read the raw bytes, verify, record, answer.

They are the hot path (every sender's request) and need nothing Flask adds: no routing beyond
two exact paths, no request or response objects, no context. Measured in-process, Flask's
machinery was about as costly as the rest of a callback, so these two paths answer in front
of Flask, and everything else (health, metrics, the dashboard) goes on to it. Answers have
the same JSON shape as the rest of the service.

The steps (`check`, the intake script, `recorded`) do no I/O of their own: `CallbackApp`
runs them as WSGI, blocking on Redis (the tests, any WSGI server), and `asgi.py` runs them
on asyncio for the web server.
"""

from __future__ import annotations

import hmac
import io
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson
from redis import RedisError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_content_length

from . import intake, jobs, metrics, payloads, signature
from .config import KEY_PREFIX, RETRY_AFTER_SECONDS, Settings
from .exceptions import PayloadError, SignatureError
from .runtime import Runtime

log = logging.getLogger("service.receiver")

PATHS = {f"/callbacks/{kind}": kind for kind in payloads.KINDS}
"""The exact paths served here, and the kind of callback each takes."""

WEBHOOK_ID_HEADER = "Elements-Webhook-Id"
"""Sent with event callbacks; a secondary de-dup key when the body has no eventId."""

COUNTERS_KEY = f"{KEY_PREFIX}counters"
"""Hash of counters of notable rejections, by reason."""

SAFE_HEADERS = ("Content-Type", "Content-Length", "User-Agent", WEBHOOK_ID_HEADER)
"""Headers kept with a delivery for the dashboard; never the signature, cookies or tokens."""

_MAX_WEBHOOK_ID_LENGTH = 200

_READ_PIECE = 64 * 1024

StartResponse = Callable[..., Any]


@dataclass
class Seen:
    """What became of one callback: the answer's reason and the ids, for the log and metrics."""

    kind: str
    answer: str = "accepted"
    detail: str = ""
    delivery_id: str | None = None
    job_id: str | None = None


@dataclass
class Answer:
    """An HTTP answer: code, the JSON document, extra headers."""

    code: int
    document: dict[str, Any]
    headers: list[tuple[str, str]] = field(default_factory=list)


class Request(Protocol):
    """What the checks read from a request besides its body: WSGI's (`Incoming`) or ASGI's
    (`asgi.AsgiRequest`)."""

    remote_addr: str | None

    def header(self, name: str) -> str | None: ...

    def query(self, name: str) -> str: ...


class Incoming:
    """One request, read straight from the WSGI environ."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.remote_addr: str | None = environ.get("REMOTE_ADDR")

    def header(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value: str | None = self.environ.get(key)
        return value

    def query(self, name: str) -> str:
        values = parse_qs(self.environ.get("QUERY_STRING", "")).get(name)
        return values[0] if values else ""

    def body(self, limit: int) -> bytes:
        """The raw body, in one bytes object; RequestEntityTooLarge past `limit` bytes,
        chunked or not.

        With a Content-Length it is one read of exactly that many bytes (werkzeug's limited
        stream gathers 64 KiB reads in a bytearray and copies that: two copies of a 10 MiB
        body at once). A chunked body is read past the limit by at most one piece, so that a
        stream cut at exactly the limit is not taken for a body of exactly the limit.
        """
        stream = self.environ["wsgi.input"]
        length = get_content_length(self.environ)
        if length is not None:
            if length > limit:
                raise RequestEntityTooLarge()
            # Fewer bytes if the sender hung up: the signature then fails, as it should.
            body: bytes = stream.read(length)
            return body
        if not self.environ.get("wsgi.input_terminated"):
            return b""  # no length, and a server that would not end the stream (PEP 3333)
        pieces = io.BytesIO()  # its getvalue() hands over its buffer: no copy
        while piece := stream.read(_READ_PIECE):
            pieces.write(piece)
            if pieces.tell() > limit:
                raise RequestEntityTooLarge()
        return pieces.getvalue()


class CallbackApp:
    """WSGI middleware: the callback paths answered here, anything else passed to `inner`."""

    def __init__(self, runtime: Runtime, inner: Callable[..., Iterable[bytes]]) -> None:
        self.runtime = runtime
        self.inner = inner

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        kind = PATHS.get(environ.get("PATH_INFO", ""))
        if kind is None:
            return self.inner(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return _send(start_response, not_posted())
        started = time.perf_counter()
        seen = Seen(kind)
        incoming = Incoming(environ)
        try:
            answer = take(self.runtime, kind, incoming, seen)
        except Exception:
            answer = internal_error(kind, seen)
        observe(seen, answer.code, started, incoming.remote_addr)
        return _send(start_response, answer)


def take(parts: Runtime, kind: str, incoming: Incoming, seen: Seen) -> Answer:
    """Take one callback: 202 queued, 200 duplicate, or a 4xx/503 that says why not.

    The WSGI way (tests, `flask run`); `asgi.py` takes them with the same steps, awaiting
    Redis instead of blocking on it.
    """
    settings = parts.settings
    # The HMAC is over the bytes on the wire, read before anything could parse them.
    try:
        held: list[bytes | bytearray] = [incoming.body(settings.max_body_bytes)]
    except RequestEntityTooLarge:
        return too_large(settings, seen)
    checked = check(parts, kind, incoming, held, seen)
    if isinstance(checked, Answer):
        return checked
    try:
        unknown = not_our_job(parts, checked.payload, incoming) if settings.strict_jobs else None
        if unknown is not None:
            return unknown_job(unknown, seen)
        write = checked.write(parts)  # its first call in a process asks Redis its version
        earlier = intake.run(parts.accept_script, write, settings)
    except RedisError as exc:
        return unavailable(exc, seen)
    return recorded(checked.payload, write.receipt(earlier), seen)


@dataclass
class Checked:
    """A callback that passed every check, and what its record is made of."""

    payload: payloads.Payload
    body: bytes
    signed: bool
    webhook_id: str | None
    remote_addr: str | None
    headers: dict[str, str]

    def write(self, parts: Runtime) -> intake.Write:
        """The intake script's call that records it."""
        return intake.prepare(parts.queue, parts.settings, self.payload, self.body,
                              signed=self.signed, webhook_id=self.webhook_id,
                              remote_addr=self.remote_addr, headers=self.headers)  # fmt: skip


def check(
    parts: Runtime, kind: str, incoming: Request, held: list[bytes | bytearray], seen: Seen
) -> Answer | Checked:
    """Verify and parse the callback's body, taken out of `held`: the refusal (401, 400), or
    what to write.

    The body comes in a list that this empties, so that nothing else holds the bytes while
    their text is parsed: for a large body, two copies alive at a time instead of three (the
    bench measures it). They are made again from the text after.
    """
    settings = parts.settings
    body = held.pop()
    header = incoming.header(signature.HEADER)
    if header is None and settings.allow_unsigned:
        signed = False
    else:
        try:
            signature.verify(header, body, settings.signature_keys)
        except SignatureError as exc:
            seen.answer, seen.detail = "signature", str(exc)
            return reply(401, "unauthorized", str(exc))
        signed = True

    webhook_id = _webhook_id(incoming)
    try:
        text = payloads.decode(body)
        del body  # see the docstring
        payload = payloads.parse(kind, text, webhook_id)
    except PayloadError as exc:
        seen.answer, seen.detail = "malformed", str(exc)
        return reply(400, "malformed", str(exc))
    seen.job_id = payload.job_id
    body = text.encode("utf-8")  # the very bytes received (UTF-8 is exact both ways)
    del text
    return Checked(payload, body, signed, webhook_id, incoming.remote_addr,
                   _safe_headers(incoming))  # fmt: skip


def not_posted() -> Answer:
    return reply(405, "method_not_allowed", "callbacks are POSTed", headers=[("Allow", "POST")])


def internal_error(kind: str, seen: Seen) -> Answer:
    """A bug, not bad input: logged with its traceback (call it in an except block),
    answered without it."""
    log.exception("unexpected error while taking a %s callback", kind)
    seen.answer, seen.detail = "error", "internal error"
    return reply(500, "internal_server_error", "the server failed; retry later")


def too_large(settings: Settings, seen: Seen) -> Answer:
    seen.answer, seen.detail = "too_large", "body over BULKHOOK_MAX_BODY_BYTES"
    return reply(413, "too_large", f"the body is larger than {settings.max_body_bytes} bytes")


def unknown_job(reason: str, seen: Seen) -> Answer:
    seen.answer, seen.detail = "unknown_job", reason
    return reply(404, "unknown_job", reason)


def unavailable(exc: RedisError, seen: Seen) -> Answer:
    seen.answer, seen.detail = "unavailable", f"redis: {exc.__class__.__name__}"
    return reply(503, "unavailable", "cannot record the callback now; retry later",
                 headers=[("Retry-After", str(RETRY_AFTER_SECONDS))])  # fmt: skip


def recorded(payload: payloads.Payload, receipt: intake.Receipt, seen: Seen) -> Answer:
    """The answer once the script ran: 202, or 200 for a duplicate."""
    seen.delivery_id = receipt.delivery_id
    if receipt.duplicate:
        seen.answer, seen.detail = "duplicate", payload.dedup_key
        return reply(200, "duplicate", "already accepted; not queued again",
                     delivery_id=receipt.delivery_id)  # fmt: skip
    seen.detail = f"status {payload.status}" if payload.status else ""
    return reply(202, "accepted", "recorded and queued", delivery_id=receipt.delivery_id)


def observe(seen: Seen, status_code: int, started: float, source: str | None) -> None:
    """The metrics and one log line for one callback."""
    seconds = time.perf_counter() - started
    metrics.callback_answered(seen.kind, seen.answer, seconds)
    refused = seen.answer not in ("accepted", "duplicate")
    if not refused:
        level = logging.INFO
    elif seen.answer in ("unavailable", "error"):
        level = logging.ERROR
    else:
        level = logging.WARNING
    if not log.isEnabledFor(level):
        return
    log.log(
        level,
        "%s callback %s%s",
        seen.kind,
        f"refused ({seen.answer})" if refused else seen.answer,
        f": {seen.detail}" if seen.detail else "",
        extra={
            "kind": seen.kind,
            "answer": seen.answer,
            "status_code": status_code,
            "delivery_id": seen.delivery_id,
            "job_id": seen.job_id,
            "source": source,
            "duration_ms": round(seconds * 1000, 3),
        },
    )


def encode(answer: Answer) -> tuple[bytes, list[tuple[str, str]]]:
    """An answer's body and headers."""
    payload = orjson.dumps(answer.document) + b"\n"
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(payload))),
        *answer.headers,
    ]
    return payload, headers


def _send(start_response: StartResponse, answer: Answer) -> list[bytes]:
    payload, headers = encode(answer)
    start_response(f"{answer.code} {HTTPStatus(answer.code).phrase}", headers)
    return [payload]


def reply(
    code: int,
    status: str,
    detail: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    **extra: Any,
) -> Answer:
    """An answer in the service's JSON shape, as errors.answer builds it for Flask's views."""
    return Answer(code, {"status": status, "detail": detail, **extra}, headers or [])


def not_our_job(parts: Runtime, payload: payloads.Payload, incoming: Request) -> str | None:
    """In strict mode, why a bulk callback is not for a job bulkhook started (None if it is)."""
    if payload.kind != payloads.BULK or payload.job_id is None:
        return None
    record = jobs.get(parts.redis, payload.job_id)
    if record is None or record.get("started_by") != "bulkhook":
        reason = "bulkhook did not start this job"
    elif not hmac.compare_digest(
        record.get("token", "").encode(), incoming.query(jobs.TOKEN_PARAMETER).encode()
    ):
        reason = "the callback URL's token does not match the job's"
    else:
        return None
    parts.redis.hincrby(COUNTERS_KEY, "rejected_unknown_job", 1)
    return reason


def _webhook_id(incoming: Request) -> str | None:
    value = (incoming.header(WEBHOOK_ID_HEADER) or "").strip()
    if not value or len(value) > _MAX_WEBHOOK_ID_LENGTH:
        return None
    return value


def _safe_headers(incoming: Request) -> dict[str, str]:
    found = {name: incoming.header(name) for name in SAFE_HEADERS}
    return {name: value[:200] for name, value in found.items() if value}
