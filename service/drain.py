"""The drain: workers take accepted deliveries from one Redis list, many per RQ task.

An RQ task costs its worker about 24 Redis round trips (measured: ~6 of the ~8 ms a trivial
follow-up took), whatever the task does. So intake does not queue an RQ task per delivery: it
appends the delivery's id to READY_KEY, and queues a `drain` task only when none is waiting
(FLAG_KEY). A drain takes ids in batches, runs each delivery's handlers in turn, and ends when
the list has stayed empty for LINGER_SECONDS (or after BUDGET_SECONDS). A delivery whose
attempt fails becomes an RQ task of its own, with RQ's retries, scheduler and failed registry
(the dead letter), exactly as before.

Why nothing is lost or stuck:
- intake pushes the id and, if the flag is free, takes it and queues a drain, in one script;
- a drain frees the flag as it starts, so a delivery pushed while it runs either finds the
  flag free (and queues another drain) or set (a drain is waiting that will take it);
- the flag expires (FLAG_TTL_SECONDS) and the sweeper queues a drain when ids wait and none is
  queued, in case RQ loses a queued drain task;
- taking an id marks its record `taken_by` the drain (and `taken_at`), atomically; a delivery
  taken long ago by a drain that no longer runs is queued again by the sweeper
  (`sweeper._held`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

from redis import Redis
from rq import Queue, Retry
from rq.job import JobStatus

from . import delivery
from .config import KEY_PREFIX, TASK_TIMEOUT_SECONDS

READY_KEY = f"{KEY_PREFIX}ready"
"""List of accepted delivery ids waiting for a drain, oldest first."""

FLAG_KEY = f"{KEY_PREFIX}drain:queued"
"""Holds the id of a drain task waiting in RQ's queue; absent when none waits."""

FLAG_TTL_SECONDS = 30
"""A drain task RQ lost holds the flag no longer than this."""

TASK = "service.tasks.drain"
"""Dotted path of the drain task."""

BATCH = 100
"""Deliveries one drain takes at a time (one round trip)."""

BUDGET_SECONDS = 5.0
"""A drain hands over to a new drain task after this long, so a worker's warm shutdown and
RQ's own bookkeeping are never far away."""

LINGER_SECONDS = 1.0
"""How long a drain that found nothing waiting waits for the next delivery before it ends.
Under steady traffic a delivery is then taken within a millisecond of its 2xx, instead of
after a new drain task's start (RQ's dequeue and a fork: 10-30 ms, measured). A burst worker
sets it to 0: it stops when the queue is empty, and waiting would only delay that."""

_TAKE = """
local ids
if ARGV[5] == 'again' then
  ids = redis.call('LRANGE', KEYS[2], 0, -1)
else
  ids = redis.call('LPOP', KEYS[1], ARGV[1])
  if not ids then return {} end
  redis.call('RPUSH', KEYS[2], unpack(ids))
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
local taken = {}
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local state = redis.call('HGET', key, 'state')
  if state and state ~= 'done' then
    redis.call('HSET', key, 'state', 'processing', 'taken_by', ARGV[2], 'taken_at', ARGV[4])
    redis.call('HINCRBY', key, 'attempts', 1)
    taken[#taken + 1] = id
  end
end
return taken
"""
"""Takes the ids and marks their records; `take` reads the records after. Not inside the
script: every string that enters Redis 7's Lua is hashed byte by byte (redis/redis#9449),
measured here at 97 us for a 64 KiB body, 1.4 ms for 1 MiB, while Redis serves no one else."""

_OPTIONS: dict[str, Any] = {
    "timeout": TASK_TIMEOUT_SECONDS,
    "description": "drain",
    # At once, when its work horse dies: the retry takes what it had taken again.
    "retry": Retry(max=3),
}

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def task_id(delivery_id: str) -> str:
    """The id of the drain task queued when `delivery_id` found no drain waiting."""
    return f"drain-{delivery_id}"


def job_template(queue: Queue) -> tuple[str, bytes]:
    """A drain task's RQ job hash, exactly as RQ's own enqueue would write it, but for its
    two times: the text fields as JSON, and RQ's compressed `data` (bytes) apart.

    A drain task has no arguments, so every one is the same but for its times: the intake
    builds this once per process instead of once per request.
    """
    job = queue.create_job(TASK, job_id="template", status=JobStatus.QUEUED, **_OPTIONS)
    queue._prepare_for_queue(job)  # what Queue.enqueue_job does before saving
    fields = job.to_dict()
    data = fields.pop("data")
    for moment in ("created_at", "enqueued_at"):
        fields.pop(moment)
    text = {name: getattr(value, "value", value) for name, value in fields.items()}
    return json.dumps({name: str(value) for name, value in text.items()}), data


def take(
    conn: Redis, drain_id: str, count: int, *, again: bool = False
) -> list[tuple[str, dict[str, str], bytes]]:
    """Take up to `count` waiting deliveries for the drain `drain_id`: id, fields, body.

    The ids taken are also kept under the drain's own key until `done_with` them: a drain
    RQ retries (its work horse was killed) takes them `again` first. Records already done
    (the sweeper's copy ran first) are left out.
    """
    script = conn.register_script(_TAKE)
    args: list[Any] = [count, drain_id, delivery.record_key(""), time.time(),
                       "again" if again else "new", TASK_TIMEOUT_SECONDS * 2]  # fmt: skip
    ids = [i.decode() for i in cast(list[bytes], script(keys=[READY_KEY, _taken_key(drain_id)],
                                                         args=args))]  # fmt: skip
    if not ids:
        return []
    pipe = conn.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hgetall(delivery.record_key(delivery_id))
    taken = []
    for delivery_id, raw in zip(ids, pipe.execute(), strict=True):
        fields, body = delivery.fields_and_body(raw)
        if body is None:
            continue  # processed already (the sweeper's copy, in the meantime): body gone
        taken.append((delivery_id, fields, body))
    return taken


def wait_for_more(conn: Redis, seconds: float) -> bool:
    """Block until a delivery waits, or `seconds` passed; True if one waits.

    BLMOVE from the tail of the list to the tail of the same list blocks while it is empty
    and, once it is not, leaves it as it was: a wait that takes nothing, so nothing is ever
    between the list and a drain's record of what it took.
    """
    if seconds <= 0:
        return False
    # Redis (6.0+) takes a fractional timeout; redis-py's hint says int.
    moved = conn.blmove(READY_KEY, READY_KEY, seconds, "RIGHT", "RIGHT")  # type: ignore[arg-type]
    return moved is not None


def done_with(conn: Redis, drain_id: str) -> None:
    """Forget what the drain has taken so far: each of those has its outcome recorded."""
    conn.delete(_taken_key(drain_id))


def _taken_key(drain_id: str) -> str:
    return f"{KEY_PREFIX}drain:taken:{drain_id}"


def release(conn: Redis, drain_id: str) -> None:
    """Free the flag if it still names this drain: the next delivery queues a new one."""
    conn.register_script(_RELEASE)(keys=[FLAG_KEY], args=[drain_id])


def ensure(conn: Redis, queue: Queue) -> bool:
    """Queue a drain task if deliveries wait and none is queued; True if it queued one."""
    if not conn.llen(READY_KEY):
        return False
    drain_id = task_id(uuid.uuid4().hex)
    if not conn.set(FLAG_KEY, drain_id, nx=True, ex=FLAG_TTL_SECONDS):
        return False
    queue.enqueue_call(TASK, job_id=drain_id, **_OPTIONS)
    return True


def waiting(conn: Redis) -> int:
    """How many deliveries wait for a drain."""
    return cast(int, conn.llen(READY_KEY))
