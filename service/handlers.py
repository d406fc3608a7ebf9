"""Handlers: user code that runs for each outcome, named by dotted path or short name.

A handler is any callable taking one argument: a `JobOutcome` for a finished bulk job (when
the Open Connectors API is configured), else the `Delivery` itself (event notifications, and
bulk callbacks without API access). Both have `.kind`. What a handler returns (if not None)
is recorded, shortened, as the outcome. Handlers never see RQ or Flask.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import Settings
from .delivery import Delivery
from .exceptions import BulkhookError, ConfigError
from .files import atomic_write, safe_name
from .outcome import JobOutcome

Handler = Callable[[Any], Any]

BUILTINS = {
    "log": "service.handlers.log_outcome",
    "archive": "service.handlers.archive",
    "forward": "service.handlers.forward",
}
"""Short names for the built-in handlers."""


class HandlerError(BulkhookError):
    """A handler raised; the message names it and its error."""


def call(name: str, handler: Handler, argument: Any) -> Any:
    """Run one handler, naming it in any error it raises."""
    try:
        return handler(argument)
    except Exception as exc:
        raise HandlerError(f"{name}: {exc.__class__.__name__}: {exc}") from exc


def load(names: Iterable[str]) -> list[tuple[str, Handler]]:
    """Resolve handler names to callables, or raise ConfigError naming the bad one."""
    return list(_load(tuple(names)))


# Built-in handlers


def log_outcome(item: JobOutcome | Delivery) -> str:
    """The `log` handler: a one-line summary of a job outcome or a delivery, as its outcome.

    It writes no line of its own: the worker's line for the delivery ("delivery ... processed
    (attempt n): log: <summary>") carries it, as the job pipeline's line does for a job. Its
    own line repeated that one, and took a fifth of the worker's CPU per delivery (py-spy).
    """
    if isinstance(item, JobOutcome):
        return (
            f"bulk job {item.job_id} {item.status}: {item.records_count} records, "
            f"{item.errors_count} errors"
        )
    if item.kind == "bulk":
        return f"bulk job {item.job_id} {item.status}"
    return f"event notification with {len(item.events)} event(s)"


def archive(item: JobOutcome | Delivery) -> str:
    """Write `<BULKHOOK_OUTBOX_DIR>/<job id>/`: status.json, errors.jsonl and the records file.

    Event notifications go to `<BULKHOOK_OUTBOX_DIR>/events/<delivery id>.json`.
    """
    outbox = Settings.from_env().outbox_dir
    if isinstance(item, Delivery):
        folder = outbox / ("events" if item.kind == "events" else "deliveries")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{item.id}.json"
        _write_json(target, item.body)
        return str(target)
    folder = outbox / safe_name(item.job_id)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(
        folder / "status.json",
        {**item.summary(), "status_document": item.status_document, "callback": item.callback},
    )
    shutil.copyfile(item.errors_path, folder / "errors.jsonl")
    if item.results_path is not None:
        # A hard link where the work and outbox folders share a disk: no copy of a large file.
        target = folder / item.results_path.name
        target.unlink(missing_ok=True)
        try:
            target.hardlink_to(item.results_path)
        except OSError:
            shutil.copyfile(item.results_path, target)
    return str(folder)


def forward(item: JobOutcome | Delivery) -> str:
    """POST a JSON summary to BULKHOOK_FORWARD_URL, signed with BULKHOOK_FORWARD_KEY.

    The next system verifies it exactly as bulkhook verifies Open Connectors, for instance
    with `bulkhook sign --key <forward key>`.
    """
    import requests

    from . import signature

    settings = Settings.from_env()
    if not settings.forward_url or not settings.forward_key:
        raise ConfigError("the forward handler needs BULKHOOK_FORWARD_URL and BULKHOOK_FORWARD_KEY")
    if isinstance(item, JobOutcome):
        summary: dict[str, Any] = {"kind": "bulk", **item.summary(), "errors": _first(item, 100)}
    else:
        summary = {
            "kind": item.kind,
            "delivery_id": item.id,
            "job_id": item.job_id,
            "status": item.status,
            "events": item.events,
        }
    body = json.dumps(summary).encode()
    response = requests.post(
        settings.forward_url,
        data=body,
        headers={
            "Content-Type": "application/json",
            signature.HEADER: signature.sign(settings.forward_key, body),
            # The same on every retry, so the next system can drop repeats.
            "Idempotency-Key": item.idempotency_key,
        },
        timeout=settings.api_timeout_seconds,
    )
    response.raise_for_status()
    return f"forwarded, HTTP {response.status_code}"


# Loading


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


def _write_json(path: Path, document: Any) -> None:
    with atomic_write(path) as out:
        out.write((json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _first(outcome: JobOutcome, limit: int) -> list[Any]:
    rows: list[Any] = []
    for row in outcome.errors():
        if len(rows) == limit:
            break
        rows.append(row)
    return rows
