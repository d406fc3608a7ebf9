"""The per-process parts the views need, kept in `app.extensions`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from redis import Redis
from redis.commands.core import Script
from rq import Queue

from .config import Settings

EXTENSION = "bulkhook"
"""Key under `app.extensions`."""


@dataclass(frozen=True)
class Runtime:
    """Settings, Redis client and queue, built once per process by `create_app`."""

    settings: Settings
    redis: Redis
    queue: Queue
    accept_script: Script


def current() -> Runtime:
    """The runtime of the app handling this request."""
    runtime: Runtime = current_app.extensions[EXTENSION]
    return runtime
