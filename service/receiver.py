"""The HTTP endpoints: read the raw bytes, verify, record, answer."""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass

from flask import Blueprint, Response, jsonify, request
from redis import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from . import intake, jobs, metrics, openapi, payloads, runtime, signature
from .config import KEY_PREFIX, RETRY_AFTER_SECONDS
from .errors import answer
from .exceptions import PayloadError, SignatureError

log = logging.getLogger(__name__)

bp = Blueprint("receiver", __name__)

WEBHOOK_ID_HEADER = "Elements-Webhook-Id"
"""Sent with event callbacks; a secondary de-dup key when the body has no eventId."""

COUNTERS_KEY = f"{KEY_PREFIX}counters"
"""Hash of counters of notable rejections, by reason."""

_MAX_WEBHOOK_ID_LENGTH = 200


@dataclass
class Seen:
    """What became of one callback: the answer's reason and the ids, for the log and metrics."""

    kind: str
    answer: str = "accepted"
    detail: str = ""
    delivery_id: str | None = None
    job_id: str | None = None


@bp.post(f"/callbacks/<any({', '.join(payloads.KINDS)}):kind>")
def receive(kind: str) -> Response:
    """Take one callback: 202 queued, 200 duplicate, or a 4xx/503 that says why not."""
    started = time.perf_counter()
    seen = Seen(kind)
    try:
        response = _receive(kind, seen)
    except RequestEntityTooLarge:
        seen.answer, seen.detail = "too_large", "body over BULKHOOK_MAX_BODY_BYTES"
        _observe(seen, 413, started)
        raise
    _observe(seen, response.status_code, started)
    return response


def _receive(kind: str, seen: Seen) -> Response:
    parts = runtime.current()
    settings = parts.settings
    # The HMAC is over the bytes on the wire, read before anything could parse them.
    body = request.get_data(cache=False)
    if len(body) > settings.max_body_bytes:
        raise RequestEntityTooLarge()
    header = request.headers.get(signature.HEADER)
    if header is None and settings.allow_unsigned:
        signed = False
    else:
        try:
            signature.verify(header, body, settings.signature_keys)
        except SignatureError as exc:
            seen.answer, seen.detail = "signature", str(exc)
            return answer(401, "unauthorized", str(exc))
        signed = True

    webhook_id = _webhook_id()
    try:
        payload = payloads.parse(kind, body, webhook_id)
    except PayloadError as exc:
        seen.answer, seen.detail = "malformed", str(exc)
        return answer(400, "malformed", str(exc))
    seen.job_id = payload.job_id

    try:
        unknown = _unknown_job(parts, payload) if settings.strict_jobs else None
        if unknown is not None:
            seen.answer, seen.detail = "unknown_job", unknown
            return answer(404, "unknown_job", unknown)
        receipt = intake.accept(
            parts.accept_script,
            parts.queue,
            settings,
            payload,
            body,
            signed=signed,
            webhook_id=webhook_id,
            remote_addr=request.remote_addr,
            headers=_safe_headers(),
        )
    except RedisError as exc:
        seen.answer, seen.detail = "unavailable", f"redis: {exc.__class__.__name__}"
        response = answer(503, "unavailable", "cannot record the callback now; retry later")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    seen.delivery_id = receipt.delivery_id
    if receipt.duplicate:
        seen.answer, seen.detail = "duplicate", payload.dedup_key
        return answer(
            200,
            "duplicate",
            "already accepted; not queued again",
            delivery_id=receipt.delivery_id,
        )
    seen.detail = f"status {payload.status}" if payload.status else ""
    return answer(202, "accepted", "recorded and queued", delivery_id=receipt.delivery_id)


def _observe(seen: Seen, status_code: int, started: float) -> None:
    """One log line and the metrics for one callback."""
    seconds = time.perf_counter() - started
    metrics.callback_answered(seen.kind, seen.answer, seconds)
    level = (
        logging.INFO
        if seen.answer in ("accepted", "duplicate")
        else logging.ERROR
        if seen.answer == "unavailable"
        else logging.WARNING
    )
    refused = seen.answer not in ("accepted", "duplicate")
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
            "source": request.remote_addr,
            "duration_ms": round(seconds * 1000, 3),
        },
    )


SAFE_HEADERS = ("Content-Type", "Content-Length", "User-Agent", WEBHOOK_ID_HEADER)
"""Headers kept with a delivery for the dashboard; never the signature, cookies or tokens."""


def _safe_headers() -> dict[str, str]:
    return {name: request.headers[name][:200] for name in SAFE_HEADERS if name in request.headers}


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive; no Redis call, so a Redis outage does not restart web nodes."""
    return answer(200, "ok", "alive")


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI document of the public endpoints."""
    return jsonify(openapi.document())


@bp.get("/metrics")
def metrics_page() -> Response:
    """Prometheus text format: this web's callbacks (all its processes) and Redis-side figures."""
    text, content_type = metrics.exposition(runtime.current().redis)
    return Response(text, content_type=content_type)


@bp.get("/readyz")
def readyz() -> Response:
    """Ready to accept callbacks: Redis answers."""
    try:
        runtime.current().redis.ping()
    except RedisError as exc:
        return answer(503, "unavailable", f"redis does not answer ({exc.__class__.__name__})")
    return answer(200, "ready", "redis answers")


def _unknown_job(parts: runtime.Runtime, payload: payloads.Payload) -> str | None:
    """In strict mode, why a bulk callback is not for a job bulkhook started (None if it is)."""
    if payload.kind != payloads.BULK or payload.job_id is None:
        return None
    record = jobs.get(parts.redis, payload.job_id)
    if record is None or record.get("started_by") != "bulkhook":
        reason = "bulkhook did not start this job"
    elif not hmac.compare_digest(
        record.get("token", "").encode(), request.args.get(jobs.TOKEN_PARAMETER, "").encode()
    ):
        reason = "the callback URL's token does not match the job's"
    else:
        return None
    parts.redis.hincrby(COUNTERS_KEY, "rejected_unknown_job", 1)
    return reason


def _webhook_id() -> str | None:
    value = request.headers.get(WEBHOOK_ID_HEADER, "").strip()
    if not value or len(value) > _MAX_WEBHOOK_ID_LENGTH:
        return None
    return value
