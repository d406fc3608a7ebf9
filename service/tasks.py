"""Follow-up tasks run by RQ workers: plain functions with JSON-serialisable arguments."""

from __future__ import annotations

import logging

from rq import get_current_job

from . import delivery, handlers
from .config import Settings

log = logging.getLogger(__name__)

_MAX_TEXT = 1000


def process_delivery(delivery_id: str) -> str:
    """Run the configured handlers for one delivery, skipping those that already succeeded.

    A failing handler raises, so RQ retries the task with backoff; handlers that succeeded
    on an earlier attempt are not run again.
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
    if fields.get("state") == delivery.DONE or body is None:
        log.info("delivery %s was already processed", delivery_id)
        return "already done"

    attempts = int(fields.get("attempts", "0")) + 1
    delivery.update(conn, delivery_id, state=delivery.PROCESSING, attempts=attempts)
    view = delivery.to_delivery(fields, body)
    done = [name for name in fields.get("handlers_done", "").split(",") if name]
    outcomes = [fields["outcome"]] if fields.get("outcome") else []

    for name, handler in handlers.load(settings.handlers):
        if name in done:
            continue
        try:
            result = handler(view)
        except Exception as exc:
            final = not job.retries_left
            delivery.update(
                conn,
                delivery_id,
                state=delivery.FAILED if final else delivery.QUEUED,
                last_error=f"{name}: {exc.__class__.__name__}: {exc}"[:_MAX_TEXT],
            )
            log.warning(
                "delivery %s: handler %s failed (attempt %d%s)",
                delivery_id,
                name,
                attempts,
                ", giving up" if final else ", will retry",
            )
            raise
        done.append(name)
        if result is not None:
            outcomes.append(f"{name}: {result}")
        # Recorded at once, so a retry after a later handler fails skips this one.
        delivery.update(
            conn,
            delivery_id,
            handlers_done=",".join(done),
            outcome="; ".join(outcomes)[:_MAX_TEXT],
        )

    with conn.pipeline() as pipe:
        delivery.update(pipe, delivery_id, state=delivery.DONE)
        # The body was kept only so the task could run again; the record stays a while.
        pipe.hdel(delivery.record_key(delivery_id), "body")
        pipe.expire(delivery.record_key(delivery_id), settings.dedup_ttl_seconds)
        pipe.execute()
    log.info("delivery %s processed (attempt %d)", delivery_id, attempts)
    return "done"
