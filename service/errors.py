"""Every answer the service gives is JSON: `{"status": ..., "detail": ...}`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)

_STATUS_WORDS = {
    400: "malformed",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    503: "unavailable",
}


def status_word(code: int) -> str:
    """An answer's `status` for HTTP status `code`: the service's own word, else the code's
    name in snake case, as werkzeug names it ("request_timeout")."""
    return _STATUS_WORDS.get(code) or HTTP_STATUS_CODES.get(code, "error").lower().replace(" ", "_")


def answer(code: int, status: str, detail: str, **extra: Any) -> Response:
    """Build a JSON answer with the project's shape."""
    response = jsonify({"status": status, "detail": detail, **extra})
    response.status_code = code
    return response


def init_app(app: Flask) -> None:
    """Answer every HTTP error, and anything unforeseen, in JSON."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    response = answer(code, status_word(code), exc.description or exc.name)
    # Keep headers the error defines, such as Allow on a 405.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected(exc: Exception) -> Response:
    # A bug, not bad input: logged with its traceback, answered without it.
    log.exception("unexpected error while handling a request")
    return _http_error(InternalServerError())
