"""One error type per concern, raised where the problem is found."""

from __future__ import annotations


class BulkhookError(Exception):
    """Base class for bulkhook's own errors."""


class ConfigError(BulkhookError):
    """A setting is missing or invalid; the message says which and how to fix it."""


class SignatureError(BulkhookError):
    """The Elements-Webhook-Signature header is missing, malformed or does not match."""


class PayloadError(BulkhookError):
    """A callback body is not UTF-8 JSON, or lacks the fields its kind needs."""
