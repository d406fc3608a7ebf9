"""Read callback bodies: what kind they are, which job and status, and their de-dup key.

Only called after the signature is good. Every way a body can be wrong becomes a
PayloadError with a sentence the sender can act on.

The body is decoded (`decode`) and parsed (`parse`) in two steps so that the caller can let go
of the raw bytes in between: the largest bodies (event notifications repeat the vendor's
payload) then have two copies alive while they are parsed, the text and the document, not
three. Nothing keeps the document: only the fields below.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .exceptions import PayloadError

BULK = "bulk"
"""Bulk-job callbacks: a flat JSON summary of the job."""

EVENTS = "events"
"""Event notifications: `{"message": {...}}`, or the older `{"eventId", "response"}` shape."""

KINDS = (BULK, EVENTS)

STATUS_ALIASES = {"COMPLETE": "COMPLETED", "CANCELED": "CANCELLED"}
"""Spellings the vendor's docs use interchangeably, mapped to one."""

MAX_IDENTIFIER_LENGTH = 200
"""Longest job id, event id or status kept; real ones are a few dozen characters."""

TERMINAL_STATUSES = frozenset({"COMPLETED", "ERROR", "ABORTED", "CANCELLED"})
"""Bulk job statuses after which nothing more happens to the job."""


_DIGEST_SLICE = 1 << 20
"""Characters of the text encoded at a time for its digest (`digest`)."""


@dataclass(frozen=True)
class Payload:
    """What the receiver needs from a verified body."""

    kind: str
    dedup_key: str
    job_id: str | None = None
    status: str | None = None
    event_id: str | None = None


def decode(body: bytes | bytearray) -> str:
    """The body as text, or PayloadError if it is not UTF-8. UTF-8 is exact both ways:
    `text.encode()` gives back the very bytes that were signed."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 (byte {exc.start})") from None


def parse(kind: str, text: str, webhook_id: str | None = None) -> Payload:
    """Parse a verified, decoded body of the given kind, or raise PayloadError."""
    if kind == BULK:
        return _bulk(_load(text))
    if kind == EVENTS:
        return _events(_load(text), text, webhook_id)
    raise ValueError(f"unknown callback kind {kind!r}")


def digest(text: str) -> str:
    """SHA-256 (hex) of the text's UTF-8 bytes, that is of the body, encoded a slice at a time
    so that no third copy of a large body is made for it."""
    hashed = hashlib.sha256()
    for start in range(0, len(text), _DIGEST_SLICE):
        hashed.update(text[start : start + _DIGEST_SLICE].encode("utf-8"))
    return hashed.hexdigest()


def normalise_status(status: str) -> str:
    """Upper-case a bulk status and fold the vendor's alternative spellings."""
    upper = status.strip().upper()
    return STATUS_ALIASES.get(upper, upper)


def _load(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("body is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise PayloadError(f"body must be a JSON object, not {_json_type(document)}")
    return document


def _reject_constant(name: str) -> None:
    raise PayloadError(f"body is not valid JSON: {name} is not a JSON value")


def _bulk(document: dict[str, Any]) -> Payload:
    job_id = _identifier(document.get("id"), "id")
    # Bulk v3 status documents name it jobStatus; accept a callback shaped like one.
    raw_status = document.get("status", document.get("jobStatus"))
    if raw_status is None:
        raise PayloadError("bulk callback has no 'status'")
    if not isinstance(raw_status, str) or not raw_status.strip():
        raise PayloadError("bulk callback 'status' must be a non-empty string")
    if len(raw_status) > MAX_IDENTIFIER_LENGTH:
        raise PayloadError(f"'status' is longer than {MAX_IDENTIFIER_LENGTH} characters")
    _require_unicode(raw_status, "status")
    status = normalise_status(raw_status)
    return Payload(
        kind=BULK,
        dedup_key=f"bulk:{job_id}:{status}",
        job_id=job_id,
        status=status,
    )


def _events(document: dict[str, Any], text: str, webhook_id: str | None) -> Payload:
    if "message" in document:
        envelope = document["message"]
        if not isinstance(envelope, dict):
            raise PayloadError("event notification 'message' must be a JSON object")
    elif "response" in document:
        if not isinstance(document["response"], dict):
            raise PayloadError("event notification 'response' must be a JSON object")
        envelope = document
    else:
        raise PayloadError("event notification needs a 'message' (or older 'response') object")

    raw_event_id = envelope.get("eventId")
    event_id = _identifier(raw_event_id, "eventId") if raw_event_id is not None else None
    if event_id is not None:
        dedup_key = f"events:{event_id}"
    elif webhook_id:
        dedup_key = f"events:webhook-id:{webhook_id}"
    else:
        dedup_key = f"events:sha256:{digest(text)}"
    return Payload(kind=EVENTS, dedup_key=dedup_key, event_id=event_id)


def _identifier(value: Any, name: str) -> str:
    """Normalise an id to a string: the vendor sends ids as strings, ints and doubles."""
    if value is None:
        raise PayloadError(f"callback has no '{name}'")
    if isinstance(value, bool):
        raise PayloadError(f"'{name}' must be a string or a number, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise PayloadError(f"'{name}' must be a whole number, not {value!r}")
        value = int(value)
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"'{name}' must be a non-empty string or a number")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise PayloadError(f"'{name}' is longer than {MAX_IDENTIFIER_LENGTH} characters")
    _require_unicode(value, name)
    return value.strip()


def _require_unicode(value: str, name: str) -> None:
    """JSON may escape half a surrogate pair ("\\ud800"): valid JSON, but no text; such an id
    cannot go into a Redis key (it answered 500 before this check)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        raise PayloadError(f"'{name}' holds a lone surrogate (\\u{code:04x}), not text") from None


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
