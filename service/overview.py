"""Where the follow-up work stands, read from Redis: for /metrics and the dashboard."""

from __future__ import annotations

import time
from typing import cast

from redis import Redis
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from . import delivery, drain
from .connection import task_queue


def queue_counts(conn: Redis) -> dict[str, float]:
    """Deliveries waiting for a drain (ready), tasks by where they are in RQ, deliveries not
    done yet, and how long the oldest has waited."""
    queue = task_queue(conn)
    oldest = cast(
        list[tuple[bytes, float]], conn.zrange(delivery.PENDING_KEY, 0, 0, withscores=True)
    )
    return {
        "ready": drain.waiting(conn),
        "queued": queue.count,
        "started": StartedJobRegistry(queue=queue).count,
        "scheduled": ScheduledJobRegistry(queue=queue).count,
        "dead_letter": FailedJobRegistry(queue=queue).count,
        "pending_deliveries": conn.zcard(delivery.PENDING_KEY),
        "oldest_pending_age_seconds": max(0.0, time.time() - oldest[0][1]) if oldest else 0.0,
    }
