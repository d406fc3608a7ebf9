"""Intake: record a verified callback and queue its follow-up task, atomically, or not at all.

A WATCH/MULTI transaction makes "seen" and "queued" one step: a concurrent duplicate either
finds the seen-key already set, or makes this transaction fail and retry into finding it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import cast

from redis import Redis, WatchError
from rq import Queue

from . import delivery
from .config import TASK_TIMEOUT_SECONDS, Settings
from .connection import task_retry
from .payloads import Payload

TASK = "service.tasks.process_delivery"
"""Dotted path of the follow-up task, as RQ stores it."""


@dataclass(frozen=True)
class Receipt:
    """The outcome of taking in one callback."""

    delivery_id: str
    duplicate: bool


def accept(
    conn: Redis,
    queue: Queue,
    settings: Settings,
    payload: Payload,
    body: bytes,
    *,
    signed: bool,
    webhook_id: str | None,
) -> Receipt:
    """Record the delivery and enqueue its task; return the earlier delivery if a duplicate.

    Raises redis.RedisError when Redis cannot take it: then nothing was written.
    """
    delivery_id = uuid.uuid4().hex
    seen = delivery.seen_key(payload.dedup_key)
    record = {
        "id": delivery_id,
        "kind": payload.kind,
        "job_id": payload.job_id,
        "status": payload.status,
        "event_id": payload.event_id,
        "webhook_id": webhook_id,
        "dedup_key": payload.dedup_key,
        "received_at": delivery.now_iso(),
        "state": delivery.QUEUED,
        "signed": signed,
        "attempts": 0,
    }
    retry = task_retry(settings)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(seen)
                earlier = cast(bytes | None, pipe.get(seen))
                if earlier is not None:
                    return Receipt(delivery_id=earlier.decode(), duplicate=True)
                pipe.multi()
                pipe.set(seen, delivery_id, ex=settings.dedup_ttl_seconds)
                delivery.save(pipe, record, body, settings.inbox_size)
                pipe.zadd(delivery.PENDING_KEY, {delivery_id: time.time()})
                queue.enqueue_call(
                    TASK,
                    args=(delivery_id,),
                    job_id=delivery_id,
                    retry=retry,
                    timeout=TASK_TIMEOUT_SECONDS,
                    description=f"{payload.kind} {payload.job_id or payload.dedup_key}",
                    pipeline=pipe,
                )
                pipe.execute()
                return Receipt(delivery_id=delivery_id, duplicate=False)
            except WatchError:
                continue
