"""The simulated endpoints, under /elements/api-v2 like the real ones."""

from __future__ import annotations

import base64
import hmac
import json
import re
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from .state import FORMATS, TERMINAL, Job, parse_upload, render, synthetic_record, validate

BASE_PATH = "/elements/api-v2"
"""Where the real API serves, after the host."""

bp = Blueprint("simulator", __name__)

_V3_FORMATS = {
    "application/json": "json",
    "txt/csv": "csv",
    "text/csv": "csv",
    "application/jsonl": "jsonl",
}
_ACCEPT = {"text/csv": "csv", "application/json": "json", "application/jsonl": "jsonl"}
_QUERY = re.compile(r"^\s*select\s+.+?\s+from\s+(\w+)(?:\s+limit\s+(\d+))?\s*$", re.I)


def _sim() -> Any:
    return current_app.extensions["simulator"]


def _error(code: int, message: str) -> Response:
    response = jsonify({"requestId": "sim", "message": message})
    response.status_code = code
    return response


@bp.before_request
def _count() -> None:
    world = _sim().world
    with world.lock:
        world.requests[request.endpoint or "unknown"] += 1


@bp.before_request
def _check_auth() -> Response | None:
    if not request.path.startswith(BASE_PATH):
        return None
    settings = _sim().settings
    parts = dict(
        part.strip().split(" ", 1)
        for part in request.headers.get("Authorization", "").split(",")
        if " " in part.strip()
    )
    expected = {"Element": settings.element_token, "User": settings.user_secret}
    if settings.organization_secret:
        expected["Organization"] = settings.organization_secret
    for name, value in expected.items():
        if not hmac.compare_digest(parts.get(name, "").encode(), str(value).encode()):
            return _error(401, "Invalid Organization or User secret, or invalid Element token.")
    return None


@bp.get(f"{BASE_PATH}/objects")
def objects() -> Response:
    with _sim().world.lock:
        return jsonify(sorted(_sim().world.records))


@bp.post(f"{BASE_PATH}/bulk/<object_name>")
def upload(object_name: str) -> Response:
    if object_name in ("query", "download"):
        return _error(405, "Method Not Allowed")
    file = request.files.get("file")
    if file is None:
        return _error(400, "a 'file' part is required")
    try:
        meta = json.loads(request.form.get("metaData") or "{}")
        file_format = str(meta.get("format", "csv")).lower()
        if file_format not in FORMATS:
            return _error(400, f"unsupported format {file_format!r}")
        rows = parse_upload(file.read(), file_format)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"cannot read the file: {exc}")
    world = _sim().world
    job = world.new_job(
        version="v2",
        direction="UPLOAD",
        object_name=object_name,
        file_format=file_format,
        callback_url=request.headers.get("Elements-Async-Callback-Url"),
        callback_payload=meta.get("callback-payload"),
    )
    with world.lock:
        for row in rows:
            reason = validate(row)
            if reason is None:
                job.records.append(row)
            else:
                job.errors.append({"record": row, "error": reason})
    return jsonify({"id": job.id, "instanceId": job.instance_id, "status": job.status})


@bp.post(f"{BASE_PATH}/bulk/query")
def query() -> Response:
    match = _QUERY.match(request.args.get("q", ""))
    if match is None:
        return _error(400, "q must be a query such as: select * from contacts")
    world = _sim().world
    object_name = match.group(1)
    if object_name not in world.records:
        return _error(400, f"unknown object {object_name!r}")
    job = _download_job(
        "v2",
        object_name,
        "csv",
        request.headers.get("Elements-Async-Callback-Url"),
        int(match.group(2)) if match.group(2) else None,
    )
    return jsonify({"id": job.id, "instanceId": job.instance_id, "status": job.status})


@bp.post(f"{BASE_PATH}/bulk/download")
def download() -> Response:
    criteria = request.get_json(silent=True)
    if not isinstance(criteria, dict) or not criteria.get("objectName"):
        return _error(400, "objectName is required")
    file_format = _V3_FORMATS.get(str(criteria.get("format", "")))
    if file_format is None:
        return _error(400, "format must be application/json, txt/csv or application/jsonl")
    if criteria["objectName"] not in _sim().world.records:
        return _error(400, f"unknown object {criteria['objectName']!r}")
    limit = criteria.get("limit")
    job = _download_job(
        "v3",
        criteria["objectName"],
        file_format,
        criteria.get("notificationUrl"),
        int(limit) if limit else None,
    )
    return jsonify({"id": job.id, "status": job.status})


def _download_job(
    version: str, object_name: str, file_format: str, callback: str | None, limit: int | None
) -> Job:
    world = _sim().world
    job = world.new_job(
        version=version,
        direction="DOWNLOAD",
        object_name=object_name,
        file_format=file_format,
        callback_url=callback,
    )
    with world.lock:
        if world.switches.synthetic_records:
            job.synthetic = min(world.switches.synthetic_records, limit or 2**63)
        else:
            job.records = list(world.records[object_name][:limit])
    return job


@bp.get(f"{BASE_PATH}/bulk/<job_id>/status")
def status(job_id: str) -> Response:
    world = _sim().world
    with world.lock:
        if world.switches.fail_status > 0:
            world.switches.fail_status -= 1
            return _error(500, "Internal Server Error (simulated)")
        job = world.jobs.get(job_id)
        if job is None:
            return _error(404, f"no bulk job {job_id}")
        return jsonify(job.status_document())


@bp.get(f"{BASE_PATH}/bulk/<job_id>/errors")
def errors(job_id: str) -> Response:
    job = _sim().world.jobs.get(job_id)
    if job is None:
        return _error(404, f"no bulk job {job_id}")
    try:
        size = max(1, min(int(request.args.get("pageSize", 200)), 5000))
        start = int(base64.urlsafe_b64decode(request.args.get("nextPage", "MA==")).decode())
    except ValueError:
        return _error(400, "bad pageSize or nextPage")
    page = job.errors[start : start + size]
    response = jsonify(page)
    response.headers["Elements-Returned-Count"] = str(len(page))
    if start + size < len(job.errors):
        token = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        response.headers["Elements-Next-Page-Token"] = token
    return response


@bp.get(f"{BASE_PATH}/bulk/<job_id>/<object_name>")
def results(job_id: str, object_name: str) -> Response:
    job = _sim().world.jobs.get(job_id)
    if job is None or job.object_name != object_name or job.direction != "DOWNLOAD":
        return _error(404, f"no download job {job_id} for {object_name}")
    if job.status != "COMPLETED":
        return _error(400, f"job {job_id} is {job.status}, not COMPLETED")
    accept = request.headers.get("Accept", "text/csv").split(";")[0].strip()
    wanted = _ACCEPT.get(accept, "csv")
    if job.version == "v3" and wanted != job.file_format:
        return _error(400, "Bad Request: the Accept header does not match the job's format")
    records: Iterator[dict[str, Any]] = (
        (synthetic_record(i) for i in range(job.synthetic)) if job.synthetic else iter(job.records)
    )
    mimetype = {"csv": "text/csv", "json": "application/json", "jsonl": "application/jsonl"}
    return Response(render(records, wanted), mimetype=mimetype[wanted])


@bp.put(f"{BASE_PATH}/bulk/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    world = _sim().world
    with world.lock:
        job = world.jobs.get(job_id)
        if job is None:
            return _error(404, f"no bulk job {job_id}")
        if job.status not in TERMINAL:
            job.cancel_requested = True
            job.status = "CANCELLATION_PENDING"
        return jsonify(job.status_document())


@bp.get(f"{BASE_PATH}/bulk/jobs")
def job_list() -> Response:
    world = _sim().world
    with world.lock:
        return jsonify([job.list_item() for job in reversed(list(world.jobs.values()))])


@bp.patch(f"{BASE_PATH}/instances/<instance_id>")
def configure_instance(instance_id: str) -> Response:
    world = _sim().world
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("configuration"), dict):
        return _error(400, "a JSON body with a 'configuration' object is required")
    with world.lock:
        if instance_id not in world.instances:
            return _error(404, f"no instance {instance_id}")
        world.instances[instance_id].update(body["configuration"])
        shown = {k: v for k, v in world.instances[instance_id].items() if "key" not in k}
    return jsonify({"id": int(instance_id), "configuration": shown})


@bp.route("/_simulator/switches", methods=["GET", "POST"])
def switches() -> Response:
    world = _sim().world
    if request.method == "POST":
        try:
            with world.lock:
                world.switches.update(request.get_json(force=True) or {})
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
    return jsonify(world.switches.as_dict())


@bp.get("/_simulator/requests")
def requests_seen() -> Response:
    world = _sim().world
    with world.lock:
        return jsonify(dict(world.requests))


@bp.get("/_simulator/callbacks")
def callbacks() -> Response:
    sim = _sim()
    with sim.world.lock:
        return jsonify(list(sim.deliverer.log))
