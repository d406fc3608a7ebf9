"""Redis connections and the RQ queue, built in the process that uses them (never at import)."""

from __future__ import annotations

import random

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from .config import QUEUE_NAME, Settings


def connect(settings: Settings) -> Redis:
    """Return a Redis client whose every call gives up within a bounded time.

    One quick retry on a dropped connection lets the first request after a Redis restart
    succeed; more would stretch the time a sender waits for its 503 when Redis hangs.
    """
    return Redis.from_url(
        settings.require_redis(),
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=RedisRetry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        health_check_interval=30,
    )


def task_queue(conn: Redis) -> Queue:
    """Return the queue follow-up tasks go to; arguments are JSON, never pickles."""
    return Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)


JITTER = 0.2
"""Each retry interval is drawn from +-20% of its setting, so failures that happened together
(an API outage) are not all retried in the same second."""


def task_retry(settings: Settings) -> Retry | None:
    """The retry policy of one follow-up task: BULKHOOK_RETRY_INTERVALS, jittered."""
    intervals = [
        round(seconds * random.uniform(1 - JITTER, 1 + JITTER))
        for seconds in settings.retry_intervals
    ]
    return Retry(max=len(intervals), interval=intervals) if intervals else None
