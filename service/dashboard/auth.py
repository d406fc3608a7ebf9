"""Who may see the dashboard: a bearer token (scripts) or a session cookie set by logging in
with that token (people); and CSRF protection for the session's POSTs.

The session is Flask's signed cookie, keyed by a secret derived from the token, so every web
node accepts it and changing the token logs everybody out. A bearer request carries no
cookie, so it needs no CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from flask import Flask, Response, g, render_template, request, session

from ..errors import answer

SESSION_LIFETIME = timedelta(hours=12)
"""How long a login lasts."""

_AUTH = "auth"
_CSRF = "csrf"


def configure(app: Flask, token: str) -> None:
    """Session cookie settings for the dashboard: signed, secure, HTTP only, same-site."""
    app.secret_key = hmac.new(token.encode(), b"bulkhook-dashboard-session", "sha256").digest()
    app.config.update(
        SESSION_COOKIE_NAME="bulkhook_dashboard",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/dashboard",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )


def fingerprint(token: str) -> str:
    """What the session stores to say "logged in with this token" (never the token)."""
    return hashlib.sha256(b"bulkhook-dashboard:" + token.encode()).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return hmac.compare_digest(given.encode(), token.encode())


def authenticate(token: str) -> bool:
    """Whether this request carries the token (bearer) or a logged-in session; sets g.bearer."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and given:
        g.bearer = True
        return token_matches(given.strip(), token)
    g.bearer = False
    stored = session.get(_AUTH)
    return isinstance(stored, str) and hmac.compare_digest(stored, fingerprint(token))


def log_in(token: str) -> None:
    """Mark the session logged in, with a fresh CSRF token (no fixation across the login)."""
    session.clear()
    session.permanent = True
    session[_AUTH] = fingerprint(token)
    session[_CSRF] = secrets.token_urlsafe(32)


def log_out() -> None:
    session.clear()


def csrf_token() -> str:
    """The session's CSRF token, made on first use (the login form needs one too)."""
    if _CSRF not in session:
        session[_CSRF] = secrets.token_urlsafe(32)
    token: str = session[_CSRF]
    return token


def check_csrf() -> None:
    """Refuse a cookie-authenticated POST without the session's CSRF token (403)."""
    if request.method != "POST" or g.get("bearer"):
        return
    given = request.form.get("csrf_token", "")
    expected = session.get(_CSRF, "")
    if not (given and expected and hmac.compare_digest(given, expected)):
        raise Refused(403, "forbidden", "the form's CSRF token is missing or stale; reload it")


class Refused(Exception):
    """A dashboard refusal: the login page for browsers, JSON for everything else."""

    def __init__(self, code: int, status: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status
        self.detail = detail

    def response(self) -> Response:
        if _wants_html():
            page = render_template("dashboard/login.html", error=self.detail, next=request.path)
            response = Response(page, status=self.code, content_type="text/html; charset=utf-8")
        else:
            response = answer(self.code, self.status, self.detail)
        if self.code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="bulkhook dashboard"'
        return response


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def cookie_will_be_dropped() -> bool:
    """Whether the browser will refuse the Secure session cookie: plain HTTP, not loopback."""
    host = (
        request.host.rsplit(":", 1)[0]
        if not request.host.startswith("[")
        else (request.host.split("]")[0] + "]")
    )
    return not request.is_secure and host not in _LOOPBACK_HOSTS


def _wants_html() -> bool:
    accepted = request.accept_mimetypes
    return accepted.accept_html and accepted["text/html"] >= accepted["application/json"]
