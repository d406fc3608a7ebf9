"""bulkhook: receive Open Connectors bulk-job callbacks and event notifications.

`create_app()` only wires: settings, the Redis client and queue, error handlers, blueprints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import dashboard, errors, handlers, intake, logs, receiver
from .callbacks import CallbackApp
from .config import Settings
from .connection import connect, task_queue
from .runtime import EXTENSION, Runtime


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the web app; `test_config` holds environment-style settings over os.environ."""
    logs.configure()
    environ = dict(os.environ)
    if test_config:
        environ.update(test_config)
    settings = Settings.from_env(environ)
    settings.require_redis()
    settings.check_receiver()
    handlers.load(settings.handlers)  # fail at start-up, not on the first callback

    app = Flask(__name__)
    # Bounds the bodies Flask reads (the dashboard's forms); callbacks.py enforces
    # BULKHOOK_MAX_BODY_BYTES on callbacks itself.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    redis = connect(settings)
    parts = Runtime(
        settings=settings,
        redis=redis,
        queue=task_queue(redis),
        accept_script=intake.script(redis),
    )
    app.extensions[EXTENSION] = parts
    # The callback paths are answered before Flask (the hot path); the rest goes on to it.
    app.wsgi_app = CallbackApp(parts, app.wsgi_app)  # type: ignore[method-assign]

    if settings.trusted_proxies:
        # Take the client address (and scheme, host) from exactly that many proxies' headers.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    errors.init_app(app)
    app.register_blueprint(receiver.bp)
    dashboard.init_app(app, settings)
    return app
