"""Handlers: user code that runs for each accepted delivery, named by dotted path.

A handler is any callable taking one `Delivery`. What it returns (if not None) is recorded,
shortened, as the delivery's outcome. It never sees RQ or Flask.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from .delivery import Delivery
from .exceptions import ConfigError

log = logging.getLogger(__name__)

Handler = Callable[[Delivery], Any]

BUILTINS = {"log": "service.handlers.log_delivery"}
"""Short names for the built-in handlers."""


def log_delivery(delivery: Delivery) -> str:
    """Built-in: log one line about the delivery and record it as the outcome."""
    if delivery.kind == "bulk":
        summary = f"bulk job {delivery.job_id} {delivery.status}"
    else:
        events = _events(delivery.body)
        summary = f"event notification with {len(events)} event(s)"
    log.info("delivery %s: %s", delivery.id, summary)
    return summary


def load(names: Iterable[str]) -> list[tuple[str, Handler]]:
    """Resolve handler names to callables, or raise ConfigError naming the bad one."""
    return list(_load(tuple(names)))


@lru_cache(maxsize=8)
def _load(names: tuple[str, ...]) -> tuple[tuple[str, Handler], ...]:
    return tuple((name, _resolve(name)) for name in names)


def _resolve(name: str) -> Handler:
    path = BUILTINS.get(name, name)
    module_name, sep, attribute = path.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ConfigError(
            f"BULKHOOK_HANDLERS: {name!r} is not a dotted path such as mypkg.hooks.on_bulk"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"BULKHOOK_HANDLERS: cannot import {module_name!r}: {exc}") from None
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise ConfigError(f"BULKHOOK_HANDLERS: {path!r} is not a callable")
    return handler


def _events(body: Any) -> list[Any]:
    envelope = body.get("message") or body.get("response") or {}
    events = envelope.get("events") if isinstance(envelope, dict) else None
    return events if isinstance(events, list) else []
