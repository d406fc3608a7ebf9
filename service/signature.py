"""Open Connectors callback signatures: `sha256=<base64(HMAC-SHA256(key, raw body))>`.

Framework-free and bytes-only, so the same code serves the receiver, `bulkhook sign` and
anything that forwards a signed summary. `sign()` mirrors `verify()`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

from .exceptions import SignatureError

HEADER = "Elements-Webhook-Signature"
"""The header Open Connectors puts the signature in."""

SCHEME = "sha256"
"""The only accepted scheme; the platform signed with `sha1=` before March 2016."""

MAX_HEADER_LENGTH = 256
"""A real header is 51 characters; anything far longer is refused before decoding."""

_DIGEST_SIZE = hashlib.sha256().digest_size


def sign(key: str | bytes, body: bytes) -> str:
    """Return the exact header value Open Connectors would send for `body`."""
    digest = _digest(key, body)
    return f"{SCHEME}={base64.b64encode(digest).decode('ascii')}"


def verify(header: str | None, body: bytes | bytearray, keys: Iterable[str | bytes]) -> None:
    """Raise SignatureError unless `header` signs `body` with one of `keys`.

    Every key is compared, in constant time, whatever the outcome of the others, so the
    answer's timing does not tell which key (current or previous) matched.
    """
    received = _parse(header)
    keys = list(keys)
    if not keys:
        raise SignatureError("no signature key is configured to verify this signature")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(received, _digest(key, body))
    if not matched:
        raise SignatureError("signature does not match the body")


def _digest(key: str | bytes, body: bytes | bytearray) -> bytes:
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(key_bytes, body, hashlib.sha256).digest()


def _parse(header: str | None) -> bytes:
    """Return the raw digest a header carries; any malformed value is a SignatureError."""
    if header is None:
        raise SignatureError(f"missing {HEADER} header")
    value = header.strip()
    if not value:
        raise SignatureError(f"empty {HEADER} header")
    if len(value) > MAX_HEADER_LENGTH:
        raise SignatureError(f"{HEADER} header is too long to be a signature")
    if "," in value:
        # No base64 holds a comma; the header was sent twice and joined (as WSGI joins them).
        raise SignatureError(f"{HEADER} is given more than once")
    # Split once: base64 itself may end in '='.
    scheme, sep, encoded = value.partition("=")
    if not sep or scheme.strip().lower() != SCHEME:
        raise SignatureError(f"{HEADER} must start with '{SCHEME}='")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{HEADER} is not valid base64") from None
    if len(digest) != _DIGEST_SIZE:
        raise SignatureError(f"{HEADER} does not hold a SHA-256 digest")
    return digest
