"""Bulk jobs: the ones bulkhook started (and any others it hears of), and their state.

A job record is a Redis hash; `bulkhook:jobs` indexes every job by creation time and
`bulkhook:jobs:open` those not yet processed, which the reconciler polls.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, cast
from urllib.parse import urlencode

from redis import Redis
from redis.client import Pipeline

from .config import KEY_PREFIX

ALL_KEY = f"{KEY_PREFIX}jobs"
"""Sorted set of every recorded job id, scored by creation time."""

OPEN_KEY = f"{KEY_PREFIX}jobs:open"
"""Sorted set of jobs not yet processed, scored by the time of their last status check."""

OPEN = "open"
"""Started or heard of; its outcome has not been processed yet."""

DONE = "done"
"""Its outcome went through the pipeline and every handler."""

UPLOAD = "UPLOAD"
DOWNLOAD = "DOWNLOAD"

TOKEN_PARAMETER = "token"
"""Query parameter of the callback URL holding the per-job token."""


def job_key(job_id: str) -> str:
    """Redis key of a job's record."""
    return f"{KEY_PREFIX}job:{job_id}"


def new_token() -> str:
    """A fresh per-job token for a callback URL."""
    return secrets.token_urlsafe(24)


def callback_url(public_url: str, token: str) -> str:
    """The URL a job started by bulkhook calls back, carrying its token."""
    return f"{public_url.rstrip('/')}/callbacks/bulk?{urlencode({TOKEN_PARAMETER: token})}"


def record_started(
    conn: Redis,
    job_id: str,
    *,
    object_name: str,
    direction: str,
    callback: str | None,
    token: str | None,
    started_by: str = "bulkhook",
) -> None:
    """Remember a job bulkhook started, so its callback can be matched and reconciled."""
    now = time.time()
    fields: dict[Any, Any] = {
        "id": job_id,
        "object": object_name,
        "direction": direction,
        "created_at": now,
        "callback_url": callback or "",
        "token": token or "",
        "started_by": started_by,
        "state": OPEN,
        "status": "CREATED",
    }
    with conn.pipeline() as pipe:
        pipe.hset(job_key(job_id), mapping=fields)
        pipe.zadd(ALL_KEY, {job_id: now})
        pipe.zadd(OPEN_KEY, {job_id: now})
        pipe.execute()


def ensure(conn: Redis, job_id: str, *, object_name: str | None, direction: str | None) -> None:
    """Record a job bulkhook did not start, the first time a callback names it."""
    now = time.time()
    if conn.hsetnx(job_key(job_id), "id", job_id):
        fields: dict[Any, Any] = {
            "object": object_name or "",
            "direction": direction or "",
            "created_at": now,
            "started_by": "elsewhere",
            "state": OPEN,
        }
        with conn.pipeline() as pipe:
            pipe.hset(job_key(job_id), mapping=fields)
            pipe.zadd(ALL_KEY, {job_id: now})
            pipe.zadd(OPEN_KEY, {job_id: now})
            pipe.execute()


def get(conn: Redis, job_id: str) -> dict[str, str] | None:
    """A job's record as text, or None."""
    raw = cast(dict[bytes, bytes], conn.hgetall(job_key(job_id)))
    return {k.decode(): v.decode() for k, v in raw.items()} if raw else None


def update(conn: Redis | Pipeline, job_id: str, **fields: Any) -> None:
    """Set fields of a job's record."""
    conn.hset(job_key(job_id), mapping={k: str(v) for k, v in fields.items()})


def checked(conn: Redis, job_id: str, status: str, **fields: Any) -> None:
    """Note a status check, which moves the job to the back of the reconciler's line."""
    now = time.time()
    with conn.pipeline() as pipe:
        update(pipe, job_id, status=status, last_checked=now, **fields)
        pipe.zadd(OPEN_KEY, {job_id: now}, xx=True)
        pipe.execute()


def postpone(conn: Redis, job_id: str) -> None:
    """Move an open job to the back of the reconciler's line without a check."""
    conn.zadd(OPEN_KEY, {job_id: time.time()}, xx=True)


def finish(conn: Redis, job_id: str) -> None:
    """Mark a job processed: it leaves the reconciler's set."""
    with conn.pipeline() as pipe:
        update(pipe, job_id, state=DONE, finished_at=time.time())
        pipe.zrem(OPEN_KEY, job_id)
        pipe.execute()


def stale(conn: Redis, older_than_seconds: float, limit: int = 500) -> list[str]:
    """Open jobs whose last check (or start) is older than `older_than_seconds`."""
    cutoff = time.time() - older_than_seconds
    ids = cast(list[bytes], conn.zrangebyscore(OPEN_KEY, "-inf", cutoff, start=0, num=limit))
    return [i.decode() for i in ids]


def recent(conn: Redis, limit: int) -> list[dict[str, str]]:
    """Up to `limit` job records, newest first."""
    ids = [i.decode() for i in cast(list[bytes], conn.zrevrange(ALL_KEY, 0, limit - 1))]
    pipe = conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(job_key(job_id))
    return [
        {k.decode(): v.decode() for k, v in raw.items() if k != b"token"}
        for raw in pipe.execute()
        if raw
    ]
