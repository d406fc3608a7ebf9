"""Logging set-up shared by the web app, the worker and the CLI."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""One line per record: time, level, module, message (ids only, never keys or payloads)."""


def configure(level: int = logging.INFO) -> None:
    """Log to stderr unless the host process (gunicorn, a test runner) already set logging up."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
