"""The OpenAPI 3.1 document of the public endpoints, served at /openapi.json.

Written by hand from the views' contract (README, Endpoints) and checked against the live
server by schemathesis in the tests: every answer it gets must be one this document lists.
The dashboard is for people, behind a token, and is left out.
"""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_MAX_BODY_BYTES, RETRY_AFTER_SECONDS
from .payloads import MAX_IDENTIFIER_LENGTH
from .signature import HEADER

_ANSWER = {
    "type": "object",
    "required": ["status", "detail"],
    "properties": {
        "status": {"type": "string", "description": "one word: accepted, duplicate, or why not"},
        "detail": {"type": "string", "description": "what happened, for a person"},
        "delivery_id": {"type": "string", "description": "the accepted delivery's id"},
    },
}

_TEXT = {"type": "string", "pattern": "\\S", "maxLength": MAX_IDENTIFIER_LENGTH}
"""Some text besides white space, within the length ids and statuses may have."""

_IDENTIFIER = {
    "description": "a string, or a whole number (the vendor sends ids as both, even as 1.0)",
    "anyOf": [_TEXT, {"type": "integer", "minimum": -1e198, "maximum": 1e198}],
}

_BULK_CALLBACK = {
    "type": "object",
    "description": "The job summary Open Connectors POSTs when a bulk job ends.",
    "required": ["id", "status"],
    "properties": {
        "id": _IDENTIFIER,
        "status": _TEXT,
        "jobStatus": {"type": "string", "description": "Bulk v3 spelling of status"},
        "fileFormat": {"type": "string"},
        "instanceId": _IDENTIFIER,
        "recordsCount": {"type": "integer"},
        "recordsFailedCount": {"type": "integer"},
    },
}

_EVENT_NOTIFICATION = {
    "type": "object",
    "description": "An event notification: a `message` envelope, or (older) a `response` "
    "object; with both, `message` is the one read.",
    "properties": {
        "message": {
            "type": "object",
            "properties": {
                "eventId": {"anyOf": [_IDENTIFIER, {"type": "null"}]},
                "events": {"type": "array"},
            },
        },
    },
    "anyOf": [
        {"required": ["message"]},
        {
            "required": ["response"],
            "properties": {"response": {"type": "object"}},
            "not": {"required": ["message"]},
        },
    ],
}


def _json(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {
    "Retry-After": {
        "description": f"seconds to wait before retrying ({RETRY_AFTER_SECONDS})",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def _callback(kind: str, summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"receive_{kind}",
            "summary": summary,
            "parameters": [
                {
                    "name": HEADER,
                    "in": "header",
                    "required": False,
                    "description": "sha256=<base64 of HMAC-SHA256 over the raw body>, keyed "
                    "with the instance's Callback Notification Signature Key. Required unless "
                    "BULKHOOK_ALLOW_UNSIGNED=true.",
                    "schema": {"type": "string"},
                },
                {
                    "name": "Elements-Webhook-Id",
                    "in": "header",
                    "required": False,
                    "description": "the vendor's delivery id (events): a de-dup key",
                    "schema": {"type": "string"},
                },
                {
                    "name": "token",
                    "in": "query",
                    "required": False,
                    "description": "per-job token of callback URLs bulkhook registered",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            },
            "responses": {
                "202": _json("recorded in Redis and queued for processing"),
                "200": _json("a duplicate of a delivery already accepted; not queued again"),
                "400": _json(
                    "not UTF-8 JSON, or without the fields this kind needs; or not HTTP/1.1"
                ),
                "401": _json("signature missing, malformed or not matching the body"),
                "404": _json("strict mode: a bulk callback for a job bulkhook did not start"),
                "408": _json("the sender went silent for GUNICORN_TIMEOUT s in the middle"),
                "413": _json(f"body over BULKHOOK_MAX_BODY_BYTES ({DEFAULT_MAX_BODY_BYTES})"),
                "414": _json("URL over gunicorn's limit_request_line"),
                "431": _json(
                    "header fields over gunicorn's limit_request_fields or limit_request_field_size"
                ),
                "503": _json("Redis cannot record it now; retry", headers=_RETRY_AFTER),
            },
        }
    }


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bulkhook",
            "version": "1",
            "description": "Receiver for SAP Open Connectors bulk-job callbacks and event "
            "notifications. Every answer is JSON {status, detail}.",
        },
        "paths": {
            "/callbacks/bulk": _callback(
                "bulk", "A bulk job's completion callback", _BULK_CALLBACK
            ),  # fmt: skip
            "/callbacks/events": _callback("events", "An event notification", _EVENT_NOTIFICATION),
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive (no Redis call)",
                    "responses": {"200": _json("alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Ready to take callbacks: Redis answers",
                    "responses": {"200": _json("ready"), "503": _json("Redis does not answer")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": {"Answer": _ANSWER}},
    }
