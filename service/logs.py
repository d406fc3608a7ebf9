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

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""One line per record for humans: time, level, module, message."""

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
"""The standard fields every JSON line carries (renamed below)."""

SETTING = "BULKHOOK_LOG_FORMAT"
"""json (default) or text."""

FORMATS = ("json", "text")

ACCESS_LOGGER = "uvicorn.access"
"""The web server's access log (uvicorn's worker under gunicorn): its records' arguments are
client address, method, path with query, HTTP version and status code."""


class AccessLines(logging.Filter):
    """The web's access lines: never a query string (it carries per-job callback tokens).

    (A callback the app logs itself gets no access line at all: the web worker's protocol
    does not ask for one, `web_worker.py`.)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != ACCESS_LOGGER or not isinstance(record.args, tuple):
            return True
        if len(record.args) != 5:
            return True
        client, method, path, version, status = record.args
        record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


def app_logs_callbacks() -> bool:
    """Whether the app writes a line of its own for each callback (INFO on for its logger)."""
    return logging.getLogger("service.receiver").isEnabledFor(logging.INFO)


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's formatter with bulkhook's field names, and the access log's
    arguments as fields instead of one formatted string.

    Its orjson flavour: the web writes a line per callback and the worker one per delivery.
    Measured (docs/performance.md): a line cost 15-17 us of CPU with the standard library's
    encoder, 10.8 with this and no caller lookup; without its line at all the web took 14%
    more callbacks/s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", JSON_FIELDS)
        renamed = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
        kwargs.setdefault("rename_fields", renamed)
        kwargs.setdefault("datefmt", "%Y-%m-%dT%H:%M:%S%z")
        # uvicorn passes its message again with terminal colour codes, for its own formatter.
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, "color_message"])
        super().__init__(*args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER and isinstance(record.args, tuple):
            if len(record.args) == 5:
                client, method, path, _, status = record.args
                # A copy: other handlers of the same record still get its arguments.
                record = logging.makeLogRecord(record.__dict__)
                record.msg, record.args = "access", ()
                record.remote_addr = str(client).rsplit(":", 1)[0]
                record.method = method
                record.path = str(path).split("?", 1)[0]
                record.status = status
        return super().format(record)


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
    _record_only_what_lines_show()
    handler = logging.StreamHandler()
    handler.setFormatter(formatter())
    root.addHandler(handler)
    root.setLevel(level)


def _record_only_what_lines_show() -> None:
    """Skip what every log record would otherwise look up and no line of ours shows: the
    caller's file and line (a walk up the stack per record) and the thread's and
    multiprocessing's names (the logging HOWTO's "Optimization"). The pid stays."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def gunicorn_config(level: str = "INFO") -> dict[str, Any]:
    """gunicorn's logconfig_dict: its error and access logs and the app's, in one format."""
    _record_only_what_lines_show()
    chosen = log_format()
    formatters: dict[str, Any] = {
        "bulkhook": {"()": "service.logs.JsonFormatter"}
        if chosen == "json"
        else {"format": TEXT_FORMAT}
    }
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "bulkhook",
        "filters": ["access"],
        "stream": "ext://sys.stdout",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "filters": {"access": {"()": "service.logs.AccessLines"}},
        "handlers": {"stdout": handler},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }
