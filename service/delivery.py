"""Deliveries: one accepted callback, its record in Redis, and the view handlers get.

A record is a Redis hash that lives until the delivery is processed; the raw body is kept in
it until then, so a failed task can be retried or requeued with exactly the bytes received.
The inbox is a sorted set of recent delivery ids, trimmed to a bounded size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline

from .config import KEY_PREFIX

QUEUED = "queued"
"""Accepted and waiting for a worker (also while waiting for a retry)."""

PROCESSING = "processing"
"""A worker is running the handlers."""

DONE = "done"
"""Every handler succeeded."""

FAILED = "failed"
"""Retries are used up; the task is in RQ's failed registry."""

INBOX_KEY = f"{KEY_PREFIX}inbox"
"""Sorted set of recent delivery ids, scored by time received."""

PENDING_KEY = f"{KEY_PREFIX}pending"
"""Sorted set of deliveries accepted and not yet done, scored by the time they came in."""

PREVIEW_BYTES = 2048
"""How much of a processed delivery's body its record keeps (as `preview`), for people."""

_TEXT_FIELDS = (
    "id",
    "kind",
    "job_id",
    "status",
    "event_id",
    "webhook_id",
    "remote_addr",
    "dedup_key",
    "received_at",
    "started_at",
    "state",
    "signed",
    "attempts",
    "handlers_done",
    "outcome",
    "last_error",
    "headers",
    "preview",
)


@dataclass(frozen=True)
class Delivery:
    """One accepted callback, as handlers see it."""

    id: str
    kind: str
    job_id: str | None
    status: str | None
    body: Any
    received_at: datetime
    event_id: str | None = None
    webhook_id: str | None = None
    signed: bool = True
    dedup_key: str = ""

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of this delivery: for handlers to make their effects once."""
        return idempotency_key(self.dedup_key or self.id)

    @property
    def events(self) -> list[Any]:
        """The events an event notification carries (`message.events` or `response.events`)."""
        if not isinstance(self.body, dict):
            return []
        envelope = self.body.get("message") or self.body.get("response") or {}
        events = envelope.get("events") if isinstance(envelope, dict) else None
        return events if isinstance(events, list) else []


def record_key(delivery_id: str) -> str:
    """Redis key of a delivery's record."""
    return f"{KEY_PREFIX}delivery:{delivery_id}"


def seen_key(dedup_key: str) -> str:
    """Redis key that remembers a de-dup key, holding the id of the delivery that used it."""
    return f"{KEY_PREFIX}seen:{dedup_key}"


def new_record(
    *,
    delivery_id: str,
    payload: Any,
    received_at: str,
    signed: bool,
    webhook_id: str | None,
    remote_addr: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, str | bytes]:
    """The text fields of a new delivery's record, ready to write (its body goes apart)."""
    fields: dict[str, Any] = {
        "id": delivery_id,
        "kind": payload.kind,
        "job_id": payload.job_id,
        "status": payload.status,
        "event_id": payload.event_id,
        "webhook_id": webhook_id,
        "remote_addr": remote_addr,
        "dedup_key": payload.dedup_key,
        "received_at": received_at,
        "state": QUEUED,
        "signed": signed,
        "attempts": 0,
        "headers": json.dumps(headers, separators=(",", ":")) if headers else None,
    }
    return {name: _encode(value) for name, value in fields.items() if value is not None}


def load(conn: Redis, delivery_id: str) -> tuple[dict[str, str], bytes | None] | None:
    """Return a record's text fields and its body (None once processed), or None if gone."""
    # A client without decode_responses answers bytes; the casts say so to the type checker.
    raw = cast(dict[bytes, bytes], conn.hgetall(record_key(delivery_id)))
    if not raw:
        return None
    return fields_and_body(raw)


def fields_and_body(raw: dict[bytes, bytes]) -> tuple[dict[str, str], bytes | None]:
    """A record as HGETALL answers it: its text fields, and its body (None once processed)."""
    body = raw.pop(b"body", None)
    return {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}, body


def update(conn: Redis | Pipeline, delivery_id: str, **fields: Any) -> None:
    """Set fields of an existing record."""
    conn.hset(record_key(delivery_id), mapping={k: _encode(v) for k, v in fields.items()})


def recent(conn: Redis, limit: int) -> list[dict[str, str]]:
    """Return up to `limit` records, most recent first, without their bodies."""
    ids = [i.decode() for i in cast(list[bytes], conn.zrevrange(INBOX_KEY, 0, limit - 1))]
    pipe = conn.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hmget(record_key(delivery_id), _TEXT_FIELDS)
    records = []
    for values in pipe.execute():
        if values[0] is None:  # expired after it was processed
            continue
        records.append(
            {
                name: value.decode("utf-8", "replace")
                for name, value in zip(_TEXT_FIELDS, values, strict=True)
                if value is not None
            }
        )
    return records


def to_delivery(fields: dict[str, str], body: bytes) -> Delivery:
    """Build the handlers' view of a record."""
    return Delivery(
        id=fields["id"],
        kind=fields["kind"],
        job_id=fields.get("job_id"),
        status=fields.get("status"),
        body=json.loads(body),
        received_at=datetime.fromisoformat(fields["received_at"]),
        event_id=fields.get("event_id"),
        webhook_id=fields.get("webhook_id"),
        signed=fields.get("signed") == "1",
        dedup_key=fields.get("dedup_key", ""),
    )


def idempotency_key(dedup_key: str) -> str:
    """The key handlers make their effects once by: the same for every copy of one callback.

    Handlers run at least once: a worker killed after a handler's effect but before bulkhook
    recorded its success runs it again. Derived from what the sender sent (the de-dup key),
    not from the delivery id, so it also holds when the sender delivers the same callback
    again after its first record was lost (a Redis failover before replication) or expired.
    """
    return "bulkhook-" + hashlib.sha256(dedup_key.encode()).hexdigest()[:32]


def now_iso() -> str:
    """The current UTC time, as records store it."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _encode(value: Any) -> str | bytes:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, bytes):
        return value
    return str(value)
