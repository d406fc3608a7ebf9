"""The HTTP endpoints: read the raw bytes, verify, record, answer."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, request
from redis import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from . import intake, jobs, payloads, runtime, signature
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


@bp.post(f"/callbacks/<any({', '.join(payloads.KINDS)}):kind>")
def receive(kind: str) -> Response:
    """Take one callback: 202 queued, 200 duplicate, or a 4xx/503 that says why not."""
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
            log.warning("rejected %s callback: %s", kind, exc)
            return answer(401, "unauthorized", str(exc))
        signed = True

    webhook_id = _webhook_id()
    try:
        payload = payloads.parse(kind, body, webhook_id)
    except PayloadError as exc:
        log.warning("rejected %s callback: %s", kind, exc)
        return answer(400, "malformed", str(exc))

    try:
        unknown = _unknown_job(parts, payload) if settings.strict_jobs else None
        if unknown is not None:
            log.warning("rejected bulk callback for job %s: %s", payload.job_id, unknown)
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
        )
    except RedisError as exc:
        log.error("redis could not take a %s callback: %s", kind, exc.__class__.__name__)
        response = answer(503, "unavailable", "cannot record the callback now; retry later")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    if receipt.duplicate:
        log.info(
            "duplicate %s callback %s of delivery %s", kind, payload.dedup_key, receipt.delivery_id
        )
        return answer(
            200,
            "duplicate",
            "already accepted; not queued again",
            delivery_id=receipt.delivery_id,
        )
    log.info(
        "accepted %s callback as delivery %s (job %s, status %s)",
        kind,
        receipt.delivery_id,
        payload.job_id,
        payload.status,
    )
    return answer(202, "accepted", "recorded and queued", delivery_id=receipt.delivery_id)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive; no Redis call, so a Redis outage does not restart web nodes."""
    return answer(200, "ok", "alive")


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
