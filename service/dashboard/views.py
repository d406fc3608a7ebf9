"""The dashboard's pages and actions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Response, abort, redirect, render_template, request, url_for
from rq import Worker

from .. import deadletter, delivery, jobs, overview, runtime
from ..connection import fetch_task
from . import auth, bp

_FILTERS = ("kind", "state", "q")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    """The login form; a right token sets the session cookie."""
    token = runtime.current().settings.dashboard_token
    assert token is not None  # guard() answered 404 otherwise
    next_page = _local(request.values.get("next"))
    if request.method == "GET":
        return render_template("dashboard/login.html", error=None, next=next_page)
    auth.check_csrf()  # login CSRF: the form came from this site
    if not auth.token_matches(request.form.get("token", ""), token):
        raise auth.Refused(401, "unauthorized", "that is not the dashboard token")
    auth.log_in(token)
    return redirect(next_page)  # type: ignore[return-value]


@bp.post("/logout")
def logout() -> Response:
    auth.log_out()
    return redirect(url_for("dashboard.login"))  # type: ignore[return-value]


@bp.get("/")
def inbox() -> str:
    """Recent deliveries, filtered; `partial=1` gives only the rows (live updates)."""
    parts = runtime.current()
    chosen = {name: request.args.get(name, "").strip() for name in _FILTERS}
    records = [r for r in delivery.recent(parts.redis, parts.settings.inbox_size)
               if _matches(r, chosen)]  # fmt: skip
    template = "dashboard/_rows.html" if request.args.get("partial") else "dashboard/inbox.html"
    return render_template(template, records=records, chosen=chosen, page="inbox")


@bp.get("/deliveries/<delivery_id>")
def delivery_page(delivery_id: str) -> str:
    """One delivery: safe headers, body preview, timeline, handler outcomes, errors."""
    conn = runtime.current().redis
    loaded = delivery.load(conn, delivery_id)
    if loaded is None:
        abort(404, description=f"no delivery {delivery_id} (unknown, or expired after processing)")
    fields, body = loaded
    preview: str | None
    if body is not None:
        preview = body[: delivery.PREVIEW_BYTES].decode("utf-8", "replace")
    else:
        preview = fields.get("preview")
    dead = deadletter.show(conn, delivery_id)
    return render_template(
        "dashboard/delivery.html",
        page="inbox",
        record=fields,
        headers=json.loads(fields.get("headers") or "{}"),
        preview=_pretty(preview),
        timeline=_timeline(conn, fields),
        dead=dead,
    )


@bp.get("/jobs")
def jobs_page() -> str:
    records = jobs.recent(runtime.current().redis, 200)
    for record in records:
        record["callback_url"] = _without_query(record.get("callback_url", ""))
    return render_template("dashboard/jobs.html", page="jobs", records=records)


@bp.get("/dead-letter")
def dead_letter() -> str:
    entries = deadletter.entries(runtime.current().redis)
    return render_template("dashboard/deadletter.html", page="dead-letter", entries=entries)


@bp.post("/dead-letter/<task_id>/requeue")
def requeue(task_id: str) -> Response:
    if not deadletter.requeue(runtime.current().redis, task_id):
        abort(404, description=f"task {task_id} is not in the dead-letter area")
    return redirect(url_for("dashboard.delivery_page", delivery_id=task_id))  # type: ignore


@bp.post("/dead-letter/<task_id>/discard")
def discard(task_id: str) -> Response:
    if not deadletter.discard(runtime.current().redis, task_id):
        abort(404, description=f"task {task_id} is not in the dead-letter area")
    return redirect(url_for("dashboard.dead_letter"))  # type: ignore[return-value]


@bp.get("/queues")
def queues() -> str:
    parts = runtime.current()
    workers = sorted(Worker.all(queue=parts.queue), key=lambda w: w.name)
    return render_template(
        "dashboard/queues.html",
        page="queues",
        counts=overview.queue_counts(parts.redis),
        workers=workers,
    )


def _matches(record: dict[str, str], chosen: dict[str, str]) -> bool:
    if chosen["kind"] and record.get("kind") != chosen["kind"]:
        return False
    if chosen["state"] and record.get("state") != chosen["state"]:
        return False
    needle = chosen["q"].lower()
    searched = ("id", "job_id", "event_id", "status", "webhook_id")
    return not needle or any(needle in record.get(name, "").lower() for name in searched)


def _timeline(conn: Any, fields: dict[str, str]) -> list[tuple[str | None, str]]:
    """What happened to a delivery, in order: from its record and from its RQ task."""
    events: list[tuple[str | None, str]] = [(fields.get("received_at"), "received, answered 202")]
    if fields.get("taken_at"):
        taken = datetime.fromtimestamp(float(fields["taken_at"]), UTC).isoformat()
        events.append((taken, f"taken by {fields.get('taken_by', 'a drain')}"))
    task = fetch_task(conn, fields["id"])
    if task is not None:
        if task.enqueued_at:
            events.append((task.enqueued_at.isoformat(), "task queued"))
        for result in reversed(task.results()):
            kind = "succeeded" if result.type == result.Type.SUCCESSFUL else "failed"
            events.append((result.created_at.isoformat(), f"attempt {kind}"))
        status = task.get_status()
        state = getattr(status, "value", status)
        events.append((None, f"task now {state}, retries left {task.retries_left or 0}"))
    if fields.get("started_at"):
        events.append((fields["started_at"], f"attempt {fields.get('attempts', '?')} started"))
    events.append((None, f"delivery {fields.get('state', 'unknown')}"))
    dated = sorted((e for e in events if e[0]), key=lambda e: e[0] or "")
    return dated + [e for e in events if not e[0]]


def _pretty(text: str | None) -> str | None:
    """Indent a JSON preview for reading; leave anything else as it is."""
    if not text:
        return text
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text  # cut short, or not JSON


def _without_query(url: str) -> str:
    """A callback URL without its query: the per-job token stays out of the page."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _local(target: str | None) -> str:
    """A redirect target inside the dashboard only (no open redirect)."""
    login_page = url_for("dashboard.login")
    if target and target.startswith("/dashboard") and not target.startswith(login_page):
        return target
    return url_for("dashboard.inbox")
