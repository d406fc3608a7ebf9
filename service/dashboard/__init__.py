"""The web dashboard (/dashboard): what came in and what became of it, for people.

Off unless BULKHOOK_DASHBOARD_TOKEN is set (404 then). Every page and action needs the token
(auth.py); pages are server-rendered, with a little JavaScript for live updates and local times.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from .. import runtime
from ..config import Settings
from ..errors import answer
from . import auth

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)

_OPEN_ENDPOINTS = {"dashboard.login", "dashboard.static"}
"""Reachable without the token: the login form, and the stylesheet and script it uses."""


def init_app(app: Flask, settings: Settings) -> None:
    """Register the dashboard; it answers 404 unless a token is configured."""
    if settings.dashboard_token:
        auth.configure(app, settings.dashboard_token)
    app.register_blueprint(bp)


@bp.before_request
def guard() -> Response | None:
    token = runtime.current().settings.dashboard_token
    if token is None:
        return answer(404, "not_found", "the dashboard is off: set BULKHOOK_DASHBOARD_TOKEN")
    if request.endpoint in _OPEN_ENDPOINTS:
        return None
    if not auth.authenticate(token):
        raise auth.Refused(
            401,
            "unauthorized",
            "log in with the dashboard token, or send Authorization: Bearer <token>",
        )
    auth.check_csrf()
    return None


@bp.errorhandler(auth.Refused)
def refused(exc: auth.Refused) -> Response:
    return exc.response()


@bp.app_context_processor
def template_helpers() -> dict[str, object]:
    return {"csrf_token": auth.csrf_token, "insecure": auth.cookie_will_be_dropped}


from . import views  # noqa: E402, F401 - registers the pages on bp
