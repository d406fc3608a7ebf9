"""The dead-letter area: follow-up tasks whose retries are used up, in RQ's failed registry.

Listing, inspecting, requeueing and purging them also keeps each delivery's record in step.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry

from . import delivery, drain
from .connection import fetch_task, task_queue


def registry(conn: Redis) -> FailedJobRegistry:
    """RQ's failed registry of bulkhook's queue."""
    return FailedJobRegistry(queue=task_queue(conn))


def entries(conn: Redis) -> list[dict[str, Any]]:
    """Every dead-lettered task, oldest failure first, with its last error's final line."""
    found = []
    for job in _jobs(conn):
        error = _traceback(job).strip().splitlines()
        found.append(
            {
                "id": job.id,
                "task": job.func_name,
                "args": list(job.args),
                "description": job.description,
                "failed_at": job.ended_at.isoformat() if job.ended_at else None,
                "error": error[-1] if error else None,
            }
        )
    return sorted(found, key=lambda entry: entry["failed_at"] or "")


def show(conn: Redis, task_id: str) -> dict[str, Any] | None:
    """One dead-lettered task in full: its traceback and its delivery's record (no body)."""
    if task_id not in registry(conn).get_job_ids():
        return None
    job = fetch_task(conn, task_id)
    if job is None:
        return None
    loaded = delivery.load(conn, task_id)
    record, body = loaded if loaded else (None, None)
    return {
        "id": job.id,
        "task": job.func_name,
        "args": list(job.args),
        "description": job.description,
        "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
        "failed_at": job.ended_at.isoformat() if job.ended_at else None,
        "traceback": _traceback(job),
        "delivery": record,
        "body_bytes": len(body) if body is not None else None,
    }


def requeue(conn: Redis, task_id: str) -> bool:
    """Put one dead-lettered task back on the queue; False if it is not dead-lettered."""
    if task_id not in registry(conn).get_job_ids():
        return False
    registry(conn).requeue(task_id)
    if conn.exists(delivery.record_key(task_id)):
        delivery.update(conn, task_id, state=delivery.QUEUED)
    return True


def requeue_all(conn: Redis) -> int:
    """Requeue every dead-lettered task; return how many."""
    return sum(requeue(conn, job.id) for job in _jobs(conn))


def purge(conn: Redis, older_than: timedelta) -> int:
    """Delete dead-lettered tasks, and their deliveries' records, older than `older_than`."""
    cutoff = datetime.now(UTC) - older_than
    purged = 0
    for job in _jobs(conn):
        ended = job.ended_at
        if ended is not None and ended.tzinfo is None:
            ended = ended.replace(tzinfo=UTC)
        if ended is None or ended < cutoff:
            _remove(conn, job)
            purged += 1
    return purged


def discard(conn: Redis, task_id: str) -> bool:
    """Delete one dead-lettered task and its delivery's record; False if it is not there."""
    if task_id not in registry(conn).get_job_ids():
        return False
    job = fetch_task(conn, task_id)
    if job is None:
        registry(conn).remove(task_id)
    else:
        _remove(conn, job)
    return True


def _remove(conn: Redis, job: Job) -> None:
    registry(conn).remove(job, delete_job=True)
    conn.delete(delivery.record_key(job.id))
    conn.zrem(delivery.INBOX_KEY, job.id)
    conn.zrem(delivery.PENDING_KEY, job.id)


def parse_age(text: str) -> timedelta:
    """Read an age such as 30m, 12h, 7d or 90s; ValueError otherwise."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    value, unit = text[:-1], text[-1:].lower()
    if unit not in units or not value.isdigit():
        raise ValueError(f"{text!r} is not an age such as 30m, 12h or 7d")
    return timedelta(**{units[unit]: int(value)})


def _jobs(conn: Redis) -> list[Job]:
    jobs = []
    for task_id in registry(conn).get_job_ids():
        job = fetch_task(conn, task_id)
        if job is None:
            registry(conn).remove(task_id)  # its data expired: nothing left to retry
        elif job.func_name == drain.TASK:
            # A drain whose worker died: nothing of its own to retry; the sweeper queues the
            # deliveries it had taken again.
            registry(conn).remove(job, delete_job=True)
        else:
            jobs.append(job)
    return jobs


def _traceback(job: Job) -> str:
    result = job.latest_result()
    return (result.exc_string if result is not None else None) or ""
