"""The downstream pipeline for one bulk job: re-read, fetch, hand over, once.

The callback is only a hint. The job's status is re-read from the API; a job not finished
yet is checked again later. A finished one has its errors (and, for downloads, its results)
fetched to the worker's disk, then every handler runs. Each step and each handler is marked
done in the job's record as it succeeds, so a retry repeats only what failed.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from redis import Redis
from redis.exceptions import LockError
from rq import Queue

from . import handlers, jobs
from .config import KEY_PREFIX, TASK_TIMEOUT_SECONDS, Settings
from .connection import task_queue, task_retry
from .delivery import Delivery
from .files import atomic_write, safe_name
from .openconnectors import Client, JobStatus
from .outcome import JobOutcome

log = logging.getLogger(__name__)

CHECK_TASK = "service.tasks.check_job"
"""Dotted path of the task that re-reads a job later."""


def run(
    conn: Redis,
    settings: Settings,
    job_id: str,
    *,
    callback: Delivery | None = None,
    check: int = 0,
) -> str:
    """Advance one job as far as it can go now; return a short note of what happened."""
    lock = conn.lock(f"{KEY_PREFIX}lock:job:{job_id}", timeout=TASK_TIMEOUT_SECONDS)
    if not lock.acquire(blocking=False):
        # Another worker holds this job; look again shortly rather than wait here.
        schedule_check(conn, settings, job_id, check)
        return f"job {job_id} is being processed elsewhere; checking again later"
    try:
        return _advance(conn, settings, job_id, callback, check)
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("job %s: lock expired before the pipeline finished", job_id)


def schedule_check(conn: Redis, settings: Settings, job_id: str, check: int) -> bool:
    """Queue re-read number `check + 1` after its interval; False once the intervals are used."""
    intervals = settings.status_check_intervals
    if check >= len(intervals):
        return False
    # One id per job and round: a second request for the same round replaces the first.
    task_id = f"check-{safe_name(job_id)}-{check + 1}"
    task_queue(conn).enqueue_in(
        timedelta(seconds=intervals[check]),
        CHECK_TASK,
        job_id,
        check + 1,
        job_id=task_id,
        retry=task_retry(settings),
        job_timeout=TASK_TIMEOUT_SECONDS,
    )
    return True


def reconcile(conn: Redis, settings: Settings, queue: Queue | None = None) -> list[str]:
    """Queue a check for every open job not looked at for a while (callback lost or late)."""
    queue = queue or task_queue(conn)
    due = jobs.stale(conn, settings.reconcile_after_seconds)
    for job_id in due:
        # Back of the line first, so the next run does not queue the same job again.
        jobs.postpone(conn, job_id)
        queue.enqueue(
            CHECK_TASK,
            job_id,
            len(settings.status_check_intervals),  # no follow-up chain: the next run covers it
            job_id=f"reconcile-{safe_name(job_id)}",
            retry=task_retry(settings),
            job_timeout=TASK_TIMEOUT_SECONDS,
        )
    if due:
        log.info("reconciler queued a status check for %d job(s)", len(due))
    return due


def _advance(
    conn: Redis, settings: Settings, job_id: str, callback: Delivery | None, check: int
) -> str:
    hint = callback.body if callback is not None else {}
    jobs.ensure(
        conn,
        job_id,
        object_name=hint.get("objectName") or hint.get("object_name"),
        direction=hint.get("jobDirection") or hint.get("job_direction"),
    )
    if callback is not None:
        jobs.update(conn, job_id, callback=json.dumps(callback.body))
    record = jobs.get(conn, job_id) or {}
    if record.get("state") == jobs.DONE:
        return f"job {job_id} was already processed"

    client = Client.from_settings(settings, conn)
    status = _terminal_status(record)
    if status is None:
        status = client.status(job_id)
        jobs.checked(conn, job_id, status.status, checks=int(record.get("checks", "0")) + 1)
        if not status.terminal:
            again = schedule_check(conn, settings, job_id, check)
            later = "checking again later" if again else "the reconciler will look again"
            return f"job {job_id} is {status.status}; {later}"
        # Kept, so a retry after a failed step does not ask again.
        jobs.update(conn, job_id, status_doc=json.dumps(status.raw))

    outcome = _collect(conn, settings, client, job_id, record, status)
    done = [name for name in record.get("handlers_done", "").split(",") if name]
    for name, handler in handlers.load(settings.handlers):
        if name in done:
            continue
        handlers.call(name, handler, outcome)
        done.append(name)
        jobs.update(conn, job_id, handlers_done=",".join(done))
    jobs.finish(conn, job_id)
    log.info("job %s %s processed: %s", job_id, status.status, outcome.summary())
    return (
        f"job {job_id} {status.status}: {outcome.records_count} records, "
        f"{outcome.errors_count} errors"
    )


def _terminal_status(record: dict[str, str]) -> JobStatus | None:
    if not record.get("status_doc"):
        return None
    status = JobStatus.parse(record["id"], json.loads(record["status_doc"]))
    return status if status.terminal else None


def _collect(
    conn: Redis,
    settings: Settings,
    client: Client,
    job_id: str,
    record: dict[str, str],
    status: JobStatus,
) -> JobOutcome:
    """Fetch errors and results once; a file missing on this node is fetched again."""
    callback = json.loads(record["callback"]) if record.get("callback") else None
    hint: dict[str, Any] = callback or {}
    object_name = record.get("object") or status.object_name or hint.get("objectName")
    direction = (record.get("direction") or status.direction or "").upper() or None
    file_format = status.file_format or record.get("format") or hint.get("fileFormat") or "json"
    file_format = str(file_format).lower()
    folder = settings.work_dir / safe_name(job_id)
    folder.mkdir(parents=True, exist_ok=True)

    errors_path = folder / "errors.jsonl"
    if not errors_path.exists():
        with atomic_write(errors_path) as out:
            for row in client.errors(job_id):
                out.write(json.dumps(row).encode() + b"\n")
    with open(errors_path, "rb") as rows:
        errors_count = sum(1 for _ in rows)

    results_path = None
    if direction == jobs.DOWNLOAD and status.status == "COMPLETED" and object_name:
        results_path = folder / f"records.{file_format}"
        if not results_path.exists():
            with atomic_write(results_path) as out:
                size = client.results(job_id, object_name, file_format, out)
            jobs.update(conn, job_id, results_bytes=size)

    return JobOutcome(
        job_id=job_id,
        status=status.status,
        object_name=object_name,
        direction=direction,
        records_count=status.records_count,
        errors_count=errors_count,
        errors_path=errors_path,
        results_path=results_path,
        file_format=file_format,
        callback=callback,
        status_document=status.raw,
    )
