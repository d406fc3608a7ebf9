"""Intake: record a verified callback and queue its follow-up, atomically, or not at all.

One Lua script does it in one round trip: if the de-dup key is already set it answers with
the earlier delivery's id and writes nothing (a body held out of the script, SCRIPT's
docstring says why, is taken out again); otherwise it sets the key, writes the record,
indexes it (inbox, pending), appends its id to the drain's list and, when no drain task is
waiting, queues one (`drain.py` says why). Redis runs a script whole or not at all, so there
is no "seen but not queued". The drain task's RQ fields come from RQ itself
(`Queue.create_job`, `Job.to_dict`): the script only writes them where RQ's own enqueue
would (the job hash, the queue list, the set of queues).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from redis import Redis, RedisError
from redis.commands.core import Script
from rq import Queue
from rq.utils import utcformat

from . import delivery, drain
from .config import TASK_TIMEOUT_SECONDS, Settings
from .connection import task_retry
from .payloads import Payload

TASK = "service.tasks.process_delivery"
"""Dotted path of the follow-up task, as RQ stores it."""

SCRIPT = """
local held = ARGV[12] == 'held'
local earlier = redis.call('GET', KEYS[1])
if earlier then
  if held and earlier ~= ARGV[1] then
    redis.call('DEL', KEYS[2])
  elseif held and redis.call('HGET', KEYS[2], 'state') == 'done' then
    redis.call('HDEL', KEYS[2], 'body')
    redis.call('EXPIRE', KEYS[2], ARGV[2])
  elseif held then
    redis.call('PERSIST', KEYS[2])
  end
  return earlier
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local record = {}
if held then
  redis.call('PERSIST', KEYS[2])
else
  record = {'body', ARGV[8]}
end
for name, value in pairs(cjson.decode(ARGV[7])) do
  record[#record + 1] = name
  record[#record + 1] = value
end
redis.call('HSET', KEYS[2], unpack(record))
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[3]) - 1)
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[1])
if redis.call('SET', KEYS[6], ARGV[5], 'NX', 'EX', ARGV[6]) then
  local job = {'created_at', ARGV[9], 'enqueued_at', ARGV[9], 'data', ARGV[11]}
  for name, value in pairs(cjson.decode(ARGV[10])) do
    job[#job + 1] = name
    job[#job + 1] = value
  end
  redis.call('HSET', KEYS[7], unpack(job))
  redis.call('RPUSH', KEYS[8], ARGV[5])
  redis.call('SADD', KEYS[9], KEYS[8])
end
return false
"""
"""The intake script (the module's docstring says what it does); `script` binds it to a
blocking client, `autopipeline.py` loads it on the web's asyncio client.

A body over HELD_BODY_BYTES is held out of it (ARGV[12] 'held'): written to the record by an
HSET just before, in one MULTI with the script. Every string that enters Redis 7's Lua is
hashed byte by byte (redis/redis#9449): 97 us of Redis for a 64 KiB argument, 1.4 ms for
1 MiB, measured here, while Redis serves no one else. The body comes with a PEXPIRE, so that
it goes by itself if the script does not run (Redis had forgotten it: NOSCRIPT at EXEC);
the script removes it for a duplicate, and keeps it (PERSIST) for a new delivery, or for
its own, when the client ran the round trip again after losing the answer (unless that
delivery was processed meanwhile: then as the success write left it, without its body).
"""

HELD_BODY_BYTES = 32 * 1024
"""Bodies over this are held out of the script. Measured per write (8 in a pipeline, Redis
without AOF), holding against passing through the script: at 16 KiB Redis 13 us more (MULTI
and two more commands outweigh the hash) and the web 32 us more; at 32 KiB Redis 19 us less,
the web 44 us more; at 64 KiB 67 less and 45 more; at 1 MiB 1,424 less and 107 more. The line
is where Redis gains, the part that does not scale out with more web processes."""

HOLD_MS = 10 * 60 * 1000
"""How long a held body waits for its script, if the script does not come."""


@dataclass(frozen=True)
class Receipt:
    """The outcome of taking in one callback."""

    delivery_id: str
    duplicate: bool


@dataclass(frozen=True)
class Write:
    """The intake script's call for one callback, ready to run: alone (`run`), or with the
    calls of other callbacks in one pipeline (`autopipeline.py`)."""

    delivery_id: str
    keys: list[Any]
    args: list[Any]
    held: bytes | memoryview | None = None
    """The body, when it is held out of the script."""

    @property
    def replies(self) -> int:
        """How many replies `queue`'s commands give."""
        return 1 if self.held is None else 5

    def queue(self, pipe: Any, call_script: Callable[[], Any]) -> None:
        """Queue this write on `pipe` (a pipeline, not a transaction): the script alone
        (`call_script` queues it), or MULTI, the held body, the script and EXEC."""
        if self.held is None:
            call_script()
            return
        pipe.execute_command("MULTI")
        pipe.execute_command("HSET", self.keys[1], "body", self.held)
        pipe.execute_command("PEXPIRE", self.keys[1], HOLD_MS)
        call_script()
        pipe.execute_command("EXEC")

    def answer(self, replies: list[Any]) -> Any:
        """The script's answer among `queue`'s replies, or the error that stands for it."""
        if self.held is None:
            return replies[0]
        # An error queueing (EXECABORT at EXEC), or one of the transaction's commands'.
        executed = replies[-1]
        errors = [r for r in [*replies, *(executed or [])] if isinstance(r, Exception)]
        return errors[0] if errors else executed[-1]

    def receipt(self, earlier: bytes | None) -> Receipt:
        """What the script's answer means: the earlier delivery's id if it was a duplicate."""
        # Its own id: the script ran, the reply was lost and the client's retry ran it again.
        if earlier is not None and earlier.decode() != self.delivery_id:
            return Receipt(delivery_id=earlier.decode(), duplicate=True)
        return Receipt(delivery_id=self.delivery_id, duplicate=False)


def prepare(
    queue: Queue,
    settings: Settings,
    payload: Payload,
    body: bytes,
    *,
    signed: bool,
    webhook_id: str | None,
    remote_addr: str | None = None,
    headers: dict[str, str] | None = None,
) -> Write:
    """The script call that records the delivery and queues it for a drain."""
    delivery_id = uuid.uuid4().hex
    received = time.time()
    now = datetime.fromtimestamp(received, UTC)
    record = delivery.new_record(
        delivery_id=delivery_id,
        payload=payload,
        received_at=now.isoformat(timespec="microseconds"),
        signed=signed,
        webhook_id=webhook_id,
        remote_addr=remote_addr,
        headers=headers,
    )
    drain_id = drain.task_id(delivery_id)
    keys = [
        delivery.seen_key(payload.dedup_key),
        delivery.record_key(delivery_id),
        delivery.INBOX_KEY,
        delivery.PENDING_KEY,
        drain.READY_KEY,
        drain.FLAG_KEY,
        queue.job_class.key_for(drain_id),
        queue.key,
        queue.redis_queues_keys,
    ]
    body_field: bytes | memoryview = body
    if len(body) > _PACK_WHOLE_BYTES:
        # hiredis packs a command by copying every argument into one buffer, then into the
        # bytes it returns: two more copies of a 10 MiB body (measured: 4.0 bodies at the web
        # worker's peak instead of 2). redis-py packs a command holding a memoryview itself,
        # and sends a long argument as it is.
        body_field = memoryview(body)
    # The record's text fields and the drain task's constant fields travel as one JSON
    # argument each (cjson in the script): packing some 60 arguments was a fifth of the
    # script call's cost. Bytes (the body, RQ's compressed job data) go as they are.
    template, data = _drain_template(queue)
    held = len(body) > HELD_BODY_BYTES
    args: list[Any] = [delivery_id, settings.dedup_ttl_seconds, settings.inbox_size, received,
                       drain_id, drain.FLAG_TTL_SECONDS, orjson.dumps(record),
                       b"" if held else body_field, utcformat(now), template,
                       data, "held" if held else ""]  # fmt: skip
    return Write(delivery_id, keys, args, held=body_field if held else None)


_PACK_WHOLE_BYTES = 6000
"""Above this, redis-py's own packer sends an argument as a separate buffer, uncopied."""

_templates: dict[str, tuple[str, bytes]] = {}


def _drain_template(queue: Queue) -> tuple[str, bytes]:
    """The drain task's RQ fields for `queue`, built on first use in this process."""
    if queue.key not in _templates:
        _templates[queue.key] = drain.job_template(queue)
    return _templates[queue.key]


class NotReplicated(RedisError):
    """The write reached the primary but too few replicas confirmed it in time."""


def run(accept_script: Script, write: Write, settings: Settings) -> bytes | None:
    """Run the script; with BULKHOOK_REDIS_MIN_REPLICAS, WAIT for replicas on the same connection.

    WAIT counts the replicas that have every write of its own connection, so script and WAIT
    travel in one pipeline (one connection, one round trip). Without replicas' confirmation
    the answer is a 503: the sender retries, and gets "duplicate" if the write survived.
    """
    wanted = settings.redis_min_replicas
    if not wanted and write.held is None:
        return cast(bytes | None, accept_script(keys=write.keys, args=write.args))
    pipe = accept_script.registered_client.pipeline(transaction=False)
    write.queue(pipe, lambda: accept_script(keys=write.keys, args=write.args, client=pipe))
    if wanted:
        pipe.wait(wanted, settings.redis_replica_wait_ms)
    replies = pipe.execute(raise_on_error=False)
    earlier = write.answer(replies[: write.replies])
    for reply in (earlier, replies[-1] if wanted else None):
        if isinstance(reply, Exception):
            raise reply
    if wanted:
        _require_replicas(replies[-1], wanted)
    return cast(bytes | None, earlier)


def _require_replicas(confirmed: int, wanted: int) -> None:
    missing = replicas_missing(confirmed, wanted)
    if missing is not None:
        raise missing


def replicas_missing(confirmed: int, wanted: int) -> NotReplicated | None:
    """The error for a write WAIT says too few replicas confirmed, or None."""
    if confirmed < wanted:
        return NotReplicated(f"{confirmed} of {wanted} replica(s) confirmed the write")
    return None


def task_options(settings: Settings, fields: dict[str, str]) -> dict[str, Any]:
    """How the delivery of record `fields` becomes an RQ task of its own: after a drain's
    attempt failed, or when the sweeper queues it again."""
    delivery_id = fields["id"]
    subject = fields.get("job_id") or fields.get("dedup_key")
    return {
        "args": (delivery_id,),
        "job_id": delivery_id,
        "retry": task_retry(settings),
        "timeout": TASK_TIMEOUT_SECONDS,
        "description": f"{fields.get('kind')} {subject}",
    }


def script(conn: Redis) -> Script:
    """The intake script bound to `conn`; made once per process (create_app), not per request."""
    return conn.register_script(SCRIPT)
