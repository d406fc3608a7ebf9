"""Successes: the "done" writes of processed deliveries, several in one Redis round trip.

A delivery's success is one write: its record becomes done (outcome, start time, the start of
the body as a preview), loses its body, gets its expiry and leaves the pending set. A drain
runs many deliveries in a row; one round trip each was half of what a trivial delivery cost
its worker (measured with py-spy). So successes wait here, and are written together by one
script, as soon as the oldest one's attempt started FLUSH_SECONDS ago, and before the drain
takes its next batch or ends.

What waiting costs: a worker killed before the write runs those deliveries' handlers again
(handlers run at least once, and get an idempotency key for that reason). The time bound keeps
that to what the worker did in the last FLUSH_SECONDS: a handler slower than that has its
success written at once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

from . import delivery, metrics

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.02
"""How long a success may wait for others to share its write, counted from its attempt's start."""

_FINISH = """
for _, done in ipairs(cjson.decode(ARGV[1])) do
  local key = ARGV[3] .. done[1]
  local fields = {}
  for name, value in pairs(done[2]) do
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('HDEL', key, 'body')
  redis.call('EXPIRE', key, ARGV[2])
  redis.call('ZREM', KEYS[1], done[1])
end
redis.call('HINCRBY', KEYS[2], 'succeeded', ARGV[4])
"""


@dataclass(frozen=True)
class Success:
    """One delivery's success, to be written: its new fields, and what its log line says."""

    delivery_id: str
    fields: dict[str, str]
    started: float
    """When its attempt started (time.perf_counter)."""
    log_args: tuple[Any, ...]
    log_extra: dict[str, Any]


class Successes:
    """Successes waiting for their write; `flush` writes them (also before the drain ends)."""

    def __init__(self, conn: Redis, ttl_seconds: int) -> None:
        self._conn = conn
        self._ttl = ttl_seconds
        self._script = conn.register_script(_FINISH)
        self._waiting: list[Success] = []

    def add(self, success: Success) -> None:
        """Keep `success` for the next write; write now if the oldest waiting is due."""
        self._waiting.append(success)
        if time.perf_counter() - self._waiting[0].started >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write every waiting success in one round trip, then log one line for each."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        # ensure_ascii=False: cjson takes UTF-8 as it is. The fields hold no lone surrogates
        # (handlers' results pass through `text` below), so encoding cannot fail a batch.
        entries = json.dumps([[s.delivery_id, s.fields] for s in waiting], ensure_ascii=False)
        self._script(
            keys=[delivery.PENDING_KEY, metrics.TASKS_KEY],
            args=[entries.encode(), self._ttl, delivery.record_key(""), len(waiting)],
        )
        for success in waiting:
            log.info(*success.log_args, extra=success.log_extra)


def text(value: str) -> str:
    """`value` as text Redis can store: a lone surrogate (from a JSON body's "\\ud800" that
    reached a handler's result) becomes "?" rather than failing the write."""
    return value.encode("utf-8", "replace").decode("utf-8")
