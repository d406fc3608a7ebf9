"""Logging shared by the web app, the worker, gunicorn and the CLI.

One JSON object per line by default (BULKHOOK_LOG_FORMAT=json), for log search; `text` for
humans at a terminal. Ids travel as fields (`delivery_id`, `job_id`, `kind`, `answer`,
`duration_ms`), the same names in web and worker lines, so one delivery can be followed end
to end. Keys and payloads are never logged: call sites pass ids and counts only.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""One line per record for humans: time, level, module, message."""

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
"""The standard fields every JSON line carries (renamed below)."""

SETTING = "BULKHOOK_LOG_FORMAT"
"""json (default) or text."""

FORMATS = ("json", "text")

_ACCESS_FIELDS = {
    "h": "remote_addr",
    "m": "method",
    "U": "path",
    "s": "status",
    "B": "bytes",
    "a": "user_agent",
}
"""gunicorn's access-log atoms kept in a JSON access line (the query string is left out:
it carries per-job callback tokens)."""


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger's formatter with bulkhook's field names, and gunicorn's access atoms
    as fields instead of one formatted string."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", JSON_FIELDS)
        renamed = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
        kwargs.setdefault("rename_fields", renamed)
        kwargs.setdefault("datefmt", "%Y-%m-%dT%H:%M:%S%z")
        super().__init__(*args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            atoms = record.args
            # A copy: other handlers of the same record still get gunicorn's atoms.
            record = logging.makeLogRecord(record.__dict__)
            record.msg, record.args = "access", ()
            for atom, field in _ACCESS_FIELDS.items():
                setattr(record, field, _int(atoms.get(atom)))
            record.duration_ms = round(int(atoms.get("D", 0)) / 1000, 3)
        return super().format(record)


LOGGED = "bulkhook.logged"
"""Set in a request's WSGI environ when the app wrote its own line for it (a callback)."""


class GunicornLogger(_GunicornLogger):
    """gunicorn's logger, without the access line of a request the app has logged itself.

    A callback's own line has what the access line has (path, answer and status code, source,
    duration) and its ids besides; writing both was some 5% of a callback's CPU time under
    load. Every other request (health, metrics, the dashboard, a 405) keeps its access line.
    """

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if environ.get(LOGGED):
            return
        super().access(resp, req, environ, request_time)


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def log_format(environ: dict[str, str] | None = None) -> str:
    """The chosen format; an unknown value falls back to json (logging must not fail)."""
    value = (environ if environ is not None else os.environ).get(SETTING, "json").strip().lower()
    return value if value in FORMATS else "json"


def formatter(fmt: str | None = None) -> logging.Formatter:
    """A formatter for `fmt` (default: the setting)."""
    if (fmt or log_format()) == "text":
        return logging.Formatter(TEXT_FORMAT)
    return JsonFormatter()


def configure(level: int = logging.INFO) -> None:
    """Log to stderr unless the host process (gunicorn, a test runner) already set logging up."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(formatter())
    root.addHandler(handler)
    root.setLevel(level)


def gunicorn_config(level: str = "INFO") -> dict[str, Any]:
    """gunicorn's logconfig_dict: its error and access logs and the app's, in one format."""
    chosen = log_format()
    formatters: dict[str, Any] = {
        "bulkhook": {"()": "service.logs.JsonFormatter"}
        if chosen == "json"
        else {"format": TEXT_FORMAT}
    }
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "bulkhook",
        "stream": "ext://sys.stdout",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {"stdout": handler},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }
