"""The signature module: the vendor's known answer, sign/verify symmetry, malformed headers."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from service.exceptions import SignatureError
from service.signature import sign, verify

VENDOR_KEY = "MySecretEventSignatureKey"
VENDOR_BODY = b"<INSERT_EVENT_NOTIFICATION_RESPONSE_BODY>"
VENDOR_SIGNATURE = "sha256=jHdbRx5EZAsOfTwAPJOGkNUzQMVVdu5VJlxcsk+G6jQ="


def test_sign_matches_the_vendors_published_example() -> None:
    assert sign(VENDOR_KEY, VENDOR_BODY) == VENDOR_SIGNATURE


def test_verify_accepts_the_vendors_published_example() -> None:
    verify(VENDOR_SIGNATURE, VENDOR_BODY, [VENDOR_KEY])


def test_verify_accepts_any_of_several_keys() -> None:
    verify(VENDOR_SIGNATURE, VENDOR_BODY, ["current-key", VENDOR_KEY])


def test_verify_rejects_a_tampered_body() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify(VENDOR_SIGNATURE, VENDOR_BODY + b" ", [VENDOR_KEY])


def test_verify_without_keys_fails_closed() -> None:
    with pytest.raises(SignatureError, match="no signature key"):
        verify(VENDOR_SIGNATURE, VENDOR_BODY, [])


def test_scheme_name_is_case_insensitive_and_whitespace_is_ignored() -> None:
    verify("  SHA256=" + VENDOR_SIGNATURE.split("=", 1)[1] + " ", VENDOR_BODY, [VENDOR_KEY])


_HEX = "sha256=" + hmac.new(VENDOR_KEY.encode(), VENDOR_BODY, hashlib.sha256).hexdigest()
_SHA1 = (
    "sha1="
    + base64.b64encode(hmac.new(VENDOR_KEY.encode(), VENDOR_BODY, hashlib.sha1).digest()).decode()
)
_URLSAFE = "sha256=" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "empty"),
        ("   ", "empty"),
        ("sha256=", "SHA-256 digest"),
        ("sha256", "must start with 'sha256='"),
        (VENDOR_SIGNATURE.split("=", 1)[1], "must start with 'sha256='"),
        (_SHA1, "must start with 'sha256='"),
        (_HEX, "SHA-256 digest"),  # hex is valid base64, of the wrong length
        (_URLSAFE, "not valid base64"),
        ("sha256=!!!!", "not valid base64"),
        ("sha256=" + "☃" * 20, "not valid base64"),
        ("sha256=" + "A" * 5000, "too long"),
        ("sha256=" + base64.b64encode(b"short").decode(), "SHA-256 digest"),
        (f"{VENDOR_SIGNATURE},{VENDOR_SIGNATURE}", "given more than once"),
        (f"{VENDOR_SIGNATURE}, sha256=AAAA", "given more than once"),
    ],
)
def test_malformed_headers_raise_signature_error(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(header, VENDOR_BODY, [VENDOR_KEY])
