"""Follow-up tasks run by RQ workers: plain functions with JSON-serialisable arguments."""

from __future__ import annotations

import logging
import time

from redis import Redis
from rq import get_current_job

from . import delivery, handlers, metrics, pipeline
from .config import Settings
from .payloads import BULK

log = logging.getLogger(__name__)

_MAX_TEXT = 1000


def process_delivery(delivery_id: str) -> str:
    """Take one accepted callback to its handlers.

    A bulk callback, when the Open Connectors API is configured, only hints that its job
    changed: the job pipeline re-reads it and runs the handlers on the job's outcome.
    Otherwise (event notifications, or no API) the handlers get the delivery itself, and
    handlers that succeeded on an earlier attempt are not run again.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("process_delivery runs inside an RQ worker")
    conn = job.connection
    settings = Settings.from_env()

    loaded = delivery.load(conn, delivery_id)
    if loaded is None:
        log.warning("delivery %s has no record; nothing to do", delivery_id)
        return "no record"
    fields, body = loaded
    ids = {"delivery_id": delivery_id, "job_id": fields.get("job_id"), "kind": fields.get("kind")}
    if fields.get("state") == delivery.DONE or body is None:
        log.info("delivery %s was already processed", delivery_id, extra=ids)
        return "already done"
    started = time.perf_counter()

    attempts = int(fields.get("attempts", "0")) + 1
    delivery.update(
        conn,
        delivery_id,
        state=delivery.PROCESSING,
        attempts=attempts,
        started_at=delivery.now_iso(),
    )
    view = delivery.to_delivery(fields, body)
    try:
        if view.kind == BULK and view.job_id and settings.api_configured:
            outcome = pipeline.run(conn, settings, view.job_id, callback=view)
        else:
            outcome = _run_handlers(conn, settings, fields, view)
    except Exception as exc:
        final = not job.retries_left
        delivery.update(
            conn,
            delivery_id,
            state=delivery.FAILED if final else delivery.QUEUED,
            last_error=_describe(exc)[:_MAX_TEXT],
        )
        metrics.count_task(conn, "dead_lettered" if final else "retried")
        log.warning(
            "delivery %s failed (attempt %d%s): %s",
            delivery_id,
            attempts,
            ", giving up" if final else ", will retry",
            exc.__class__.__name__,
            extra={**ids, "attempt": attempts, "answer": "failed", **_took(started)},
        )
        raise

    with conn.pipeline() as pipe:
        delivery.update(pipe, delivery_id, state=delivery.DONE, outcome=outcome[:_MAX_TEXT])
        # The body was kept only so the task could run again; the record stays a while,
        # with the start of the body for people looking at it (the dashboard).
        preview = body[: delivery.PREVIEW_BYTES].decode("utf-8", "replace")
        pipe.hset(delivery.record_key(delivery_id), "preview", preview)
        pipe.hdel(delivery.record_key(delivery_id), "body")
        pipe.hincrby(metrics.TASKS_KEY, "succeeded", 1)
        pipe.expire(delivery.record_key(delivery_id), settings.dedup_ttl_seconds)
        pipe.zrem(delivery.PENDING_KEY, delivery_id)
        pipe.execute()
    log.info(
        "delivery %s processed (attempt %d): %s",
        delivery_id,
        attempts,
        outcome,
        extra={**ids, "attempt": attempts, "answer": "done", **_took(started)},
    )
    return "done"


def _took(started: float) -> dict[str, float]:
    return {"duration_ms": round((time.perf_counter() - started) * 1000, 3)}


def check_job(job_id: str, check: int) -> str:
    """Re-read a bulk job later: scheduled when it was not finished, or by the reconciler."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("check_job runs inside an RQ worker")
    return pipeline.run(job.connection, Settings.from_env(), job_id, check=check)


def _run_handlers(
    conn: Redis, settings: Settings, fields: dict[str, str], view: delivery.Delivery
) -> str:
    """Run each handler not yet done for this delivery; record each success at once."""
    done = [name for name in fields.get("handlers_done", "").split(",") if name]
    outcomes = [fields["handler_outcomes"]] if fields.get("handler_outcomes") else []
    for name, handler in handlers.load(settings.handlers):
        if name in done:
            continue
        result = handlers.call(name, handler, view)
        done.append(name)
        if result is not None:
            outcomes.append(f"{name}: {result}")
        # Recorded at once, so a retry after a later handler fails skips this one.
        delivery.update(
            conn,
            view.id,
            handlers_done=",".join(done),
            handler_outcomes="; ".join(outcomes)[:_MAX_TEXT],
        )
    return "; ".join(outcomes)


def _describe(exc: Exception) -> str:
    if isinstance(exc, handlers.HandlerError):
        return str(exc)  # already names the handler and the error
    return f"{exc.__class__.__name__}: {exc}"
