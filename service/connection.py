"""Redis connections and the RQ queue, built in the process that uses them (never at import)."""

from __future__ import annotations

import random
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry
from redis.sentinel import Sentinel
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from .config import QUEUE_NAME, Settings


def connect(settings: Settings) -> Redis:
    """Return a Redis client whose every call gives up within a bounded time.

    One quick retry on a dropped connection lets the first request after a Redis restart
    succeed; more would stretch the time a sender waits for its 503 when Redis hangs.
    With REDIS_SENTINELS the client asks the sentinels for the primary and asks again after
    a failover (a dropped connection, or a write refused by a demoted primary).
    """
    options = _options(settings, RedisRetry(_backoff(), 1))
    if settings.redis_sentinels:
        return Sentinel(**_sentinels(settings)).master_for(_master(settings), **options)
    assert settings.redis_url is not None
    return Redis.from_url(settings.redis_url, **options)


def connect_async(settings: Settings) -> AsyncRedis:
    """`connect`, for asyncio (the web's callback paths, `asgi.py`): the same timeouts, retry
    and Sentinel discovery. Made inside the event loop that uses it."""
    options = _options(settings, AsyncRetry(_backoff(), 1))
    if settings.redis_sentinels:
        return AsyncSentinel(**_sentinels(settings)).master_for(_master(settings), **options)
    assert settings.redis_url is not None
    return AsyncRedis.from_url(settings.redis_url, **options)


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.2, base=0.02)


def _options(settings: Settings, retry: Any) -> dict[str, Any]:
    settings.require_redis()
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "retry": retry,
        "health_check_interval": 30,
    }
    if settings.redis_password is not None:
        options["password"] = settings.redis_password
    return options


def _sentinels(settings: Settings) -> dict[str, Any]:
    return {
        "sentinels": list(settings.redis_sentinels),
        "sentinel_kwargs": {
            "password": settings.redis_sentinel_password,
            "socket_timeout": settings.redis_timeout_seconds,
            "socket_connect_timeout": settings.redis_timeout_seconds,
        },
    }


def _master(settings: Settings) -> str:
    assert settings.redis_sentinel_master is not None  # require_redis checked it
    return settings.redis_sentinel_master


def task_queue(conn: Redis) -> Queue:
    """Return the queue follow-up tasks go to; arguments are JSON, never pickles."""
    return Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)


def fetch_task(conn: Redis, task_id: str) -> Job | None:
    """The RQ job of a follow-up task, or None once RQ no longer has it."""
    try:
        return Job.fetch(task_id, connection=conn, serializer=task_queue(conn).serializer)
    except NoSuchJobError:
        return None


JITTER = 0.2
"""Each retry interval is drawn from +-20% of its setting, so failures that happened together
(an API outage) are not all retried in the same second."""


def task_retry(settings: Settings) -> Retry | None:
    """The retry policy of one follow-up task: BULKHOOK_RETRY_INTERVALS, jittered."""
    intervals = _jittered(settings.retry_intervals)
    return Retry(max=len(intervals), interval=intervals) if intervals else None


def later_retry(settings: Settings) -> tuple[int, Retry | None]:
    """For a task whose first attempt already failed (in a drain): the delay before its
    second attempt, and the retries left after that one."""
    intervals = _jittered(settings.retry_intervals)
    if not intervals:
        return 0, None
    rest = intervals[1:]
    return intervals[0], Retry(max=len(rest), interval=rest) if rest else None


def _jittered(seconds: tuple[int, ...]) -> list[int]:
    return [round(s * random.uniform(1 - JITTER, 1 + JITTER)) for s in seconds]
