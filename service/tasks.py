"""Follow-up tasks run by RQ workers: plain functions with JSON-serialisable arguments."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from redis import Redis
from rq import Queue, get_current_job

from . import delivery, handlers, metrics, pipeline
from . import drain as drainer
from .config import Settings
from .connection import later_retry, task_queue
from .intake import TASK, task_options
from .payloads import BULK
from .successes import Success, Successes, text

log = logging.getLogger(__name__)

_MAX_TEXT = 1000


def process_delivery(delivery_id: str) -> str:
    """Take one accepted callback to its handlers, as an RQ task of its own.

    Deliveries are first taken by a drain (`drain` below); this task runs one whose attempt
    in the drain failed (with RQ's retries), or one the sweeper queued again.
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
        ids = {"delivery_id": delivery_id, "job_id": fields.get("job_id")}
        log.info("delivery %s was already processed", delivery_id, extra=ids)
        return "already done"
    attempts = int(fields.get("attempts", "0")) + 1
    delivery.update(conn, delivery_id, state=delivery.PROCESSING, attempts=attempts)
    success = _attempt(conn, settings, fields, body, attempts, final=not job.retries_left)
    written = Successes(conn, settings.dedup_ttl_seconds)
    written.add(success)
    written.flush()
    return "done"


def drain() -> str:
    """Run the handlers of waiting deliveries, many per RQ task (`service/drain.py`).

    A delivery whose attempt fails becomes an RQ task of its own (`process_delivery`), with
    the rest of its retries; the others are not held up by it.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("drain runs inside an RQ worker")
    conn = job.connection
    settings = Settings.from_env()
    queue = task_queue(conn)
    drainer.release(conn, job.id)
    if drainer.waiting(conn) > drainer.BATCH:
        drainer.ensure(conn, queue)  # a backlog: let another worker drain beside us
    deadline = time.monotonic() + drainer.BUDGET_SECONDS
    done = handed = 0
    successes = Successes(conn, settings.dedup_ttl_seconds)
    # A retry of this drain (its work horse died) first takes again what it had taken.
    taken = drainer.take(conn, job.id, drainer.BATCH, again=True)
    while True:
        taken = taken or drainer.take(conn, job.id, drainer.BATCH)
        if not taken:
            # Nothing waits: wait a little for the next one (a socket timeout would end it).
            wait = min(drainer.LINGER_SECONDS, deadline - time.monotonic(),
                       settings.redis_timeout_seconds / 2)  # fmt: skip
            if drainer.wait_for_more(conn, wait):
                continue
            break
        for _, fields, body in taken:
            try:
                success = _attempt(conn, settings, fields, body, int(fields["attempts"]),
                                   final=False)  # fmt: skip
            except Exception:
                _hand_to_rq(queue, settings, fields)
                handed += 1
                continue
            successes.add(success)
            done += 1
        # Written before the drain forgets what it took: a retry of it takes again only
        # what has no outcome recorded.
        successes.flush()
        drainer.done_with(conn, job.id)
        taken = []
        if time.monotonic() > deadline:
            drainer.ensure(conn, queue)
            break
    return f"{done} done, {handed} handed to RQ"


def _hand_to_rq(queue: Queue, settings: Settings, fields: dict[str, str]) -> None:
    """Make a delivery whose drain attempt failed an RQ task with its remaining retries."""
    delay, retry = later_retry(settings)
    options = {**task_options(settings, fields), "retry": retry}
    if delay:
        queue.enqueue_in(timedelta(seconds=delay), TASK, **options)
    else:
        queue.enqueue_call(TASK, **options)


def _attempt(
    conn: Redis, settings: Settings, fields: dict[str, str], body: bytes, attempts: int,
    *, final: bool,
) -> Success:  # fmt: skip
    """One attempt at a delivery marked processing: run it and return its success, for the
    caller to write (`service/successes.py`); raise if it failed (after recording it as
    queued for a retry, or failed when `final`).

    A bulk callback, when the Open Connectors API is configured, only hints that its job
    changed: the job pipeline re-reads it and runs the handlers on the job's outcome.
    Otherwise (event notifications, or no API) the handlers get the delivery itself, and
    handlers that succeeded on an earlier attempt are not run again.
    """
    delivery_id = fields["id"]
    ids = {"delivery_id": delivery_id, "job_id": fields.get("job_id"), "kind": fields.get("kind")}
    started_at = delivery.now_iso()
    started = time.perf_counter()
    view = delivery.to_delivery(fields, body)
    progress: dict[str, str] = {}
    try:
        if view.kind == BULK and view.job_id and settings.api_configured:
            outcome = pipeline.run(conn, settings, view.job_id, callback=view)
        else:
            outcome, progress = _run_handlers(conn, settings, fields, view)
    except Exception as exc:
        delivery.update(
            conn,
            delivery_id,
            state=delivery.FAILED if final else delivery.QUEUED,
            started_at=started_at,
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

    # The body was kept only so the task could run again; the record stays a while, with
    # the start of the body for people looking at it (the dashboard).
    preview = body[: delivery.PREVIEW_BYTES].decode("utf-8", "replace")
    written = {"state": delivery.DONE, "outcome": outcome[:_MAX_TEXT],
               "started_at": started_at, "preview": preview, **progress}  # fmt: skip
    return Success(
        delivery_id,
        written,
        started,
        ("delivery %s processed (attempt %d): %s", delivery_id, attempts, written["outcome"]),
        {**ids, "attempt": attempts, "answer": "done", **_took(started)},
    )


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
) -> tuple[str, dict[str, str]]:
    """Run each handler not yet done for this delivery; record each success at once.

    Returns the outcome, and the fields the last success leaves to the caller's final write:
    no handler runs after the last one, so one write less per delivery (a Redis round trip
    and, with `appendfsync always`, an fsync) changes nothing a retry would see.
    """
    done = [name for name in fields.get("handlers_done", "").split(",") if name]
    outcomes = [fields["handler_outcomes"]] if fields.get("handler_outcomes") else []
    remaining = [(n, h) for n, h in handlers.load(settings.handlers) if n not in done]
    progress: dict[str, str] = {}
    for position, (name, handler) in enumerate(remaining, start=1):
        result = handlers.call(name, handler, view)
        done.append(name)
        if result is not None:
            # As text Redis takes: a result with a lone surrogate failed every attempt.
            outcomes.append(f"{name}: {text(str(result))}")
        progress = {"handlers_done": ",".join(done),
                    "handler_outcomes": "; ".join(outcomes)[:_MAX_TEXT]}  # fmt: skip
        if position < len(remaining):
            # Recorded at once, so a retry after a later handler fails skips this one.
            delivery.update(conn, view.id, **progress)
    return "; ".join(outcomes), progress


def _describe(exc: Exception) -> str:
    if isinstance(exc, handlers.HandlerError):
        return str(exc)  # already names the handler and the error
    return f"{exc.__class__.__name__}: {exc}"
