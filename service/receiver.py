"""The Flask endpoints besides the callbacks (callbacks.py): health, readiness, metrics, and
the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from redis import RedisError

from . import metrics, openapi, runtime
from .errors import answer

bp = Blueprint("receiver", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive; no Redis call, so a Redis outage does not restart web nodes."""
    return answer(200, "ok", "alive")


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI document of the public endpoints."""
    return jsonify(openapi.document())


@bp.get("/metrics")
def metrics_page() -> Response:
    """Prometheus text format: this web's callbacks (all its processes) and Redis-side figures."""
    text, content_type = metrics.exposition(runtime.current().redis)
    return Response(text, content_type=content_type)


@bp.get("/readyz")
def readyz() -> Response:
    """Ready to accept callbacks: Redis answers."""
    try:
        runtime.current().redis.ping()
    except RedisError as exc:
        return answer(503, "unavailable", f"redis does not answer ({exc.__class__.__name__})")
    return answer(200, "ready", "redis answers")
