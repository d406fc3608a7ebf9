"""`bulkhook run`: the web server and one worker in the foreground, Redis embedded if needed.

The children run in their own sessions, so a Ctrl-C reaches only this supervisor, which
stops them in order: web and worker first (they finish what they hold), Redis last.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from . import asgi, handlers
from .config import Settings
from .embedded_redis import EmbeddedRedis

START_TIMEOUT_SECONDS = 30.0
"""How long the web server may take to answer /healthz."""

STOP_TIMEOUT_SECONDS = 30.0
"""How long web and worker get to finish before they are killed."""

REDIS_URL_FILE = "redis.url"
"""Name, under the data folder, of the file holding the embedded Redis URL while it runs."""


class _Stop(Exception):
    """Raised by the signal handler to leave the wait loop."""


def run(
    *,
    host: str,
    port: int,
    data_dir: Path,
    generate_key: Path | None,
    gunicorn_config: Path | None,
    echo: Callable[[str], None],
) -> int:
    """Supervise web and worker until a signal or a child's exit; return an exit code."""
    env = dict(os.environ)
    env["PORT"] = str(port)
    if sys.stderr.isatty():
        env.setdefault("BULKHOOK_LOG_FORMAT", "text")  # a person at a terminal
    embedded: EmbeddedRedis | None = None
    if not env.get("REDIS_URL", "").strip() and not env.get("REDIS_SENTINELS", "").strip():
        embedded = EmbeddedRedis(data_dir / "redis").start()
        env["REDIS_URL"] = embedded.url
        (data_dir / REDIS_URL_FILE).write_text(embedded.url + "\n")
        echo(
            f"REDIS_URL is not set: started an embedded Redis ({embedded.binary}) "
            f"at {embedded.url}, data in {data_dir / 'redis'}"
        )

    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        settings = Settings.from_env(env)
        if not settings.signature_keys and not settings.allow_unsigned and generate_key:
            _ensure_key(generate_key, echo)
            env["BULKHOOK_SIGNATURE_KEY_FILE"] = str(generate_key)
            settings = Settings.from_env(env)
        settings.check_receiver()
        handlers.load(settings.handlers)

        web = [sys.executable, "-m", "gunicorn", "--worker-class", asgi.WORKER_CLASS]
        if gunicorn_config is not None:
            web += ["--config", str(gunicorn_config)]
        web += ["--bind", f"{host}:{port}", asgi.APP]
        children.append(("web", subprocess.Popen(web, env=env, start_new_session=True)))
        worker = [sys.executable, "-m", "service", "worker"]
        children.append(("worker", subprocess.Popen(worker, env=env, start_new_session=True)))

        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if not _wait_serving(f"http://{shown}:{port}/healthz", children[0][1]):
            echo("the web server did not come up; stopping")
            return 1
        echo(f"callback URLs: http://{shown}:{port}/callbacks/bulk")
        echo(f"               http://{shown}:{port}/callbacks/events")
        echo("Ctrl-C stops everything.")
        return _wait(children, echo)
    except _Stop:
        echo("stopping ...")
        return 0
    finally:
        # A second Ctrl-C must not cut the orderly stop short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        _stop_children(children)
        if embedded is not None:
            embedded.stop()
            (data_dir / REDIS_URL_FILE).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ensure_key(path: Path, echo: Callable[[str], None]) -> None:
    """Create a random signature key file for a first try, once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        echo(f"no signature key configured: generated one into {path}")
    else:
        echo(f"no signature key configured: using the generated one in {path}")
    echo(
        f"  sign a body:      BULKHOOK_SIGNATURE_KEY_FILE={path} bulkhook sign body.json\n"
        f"  send a test one:  BULKHOOK_SIGNATURE_KEY_FILE={path} bulkhook send "
        "http://127.0.0.1:$PORT/callbacks/bulk body.json\n"
        "  Give the same key to Open Connectors as the instance's "
        "Callback Notification Signature Key."
    )


def _wait_serving(url: str, web: subprocess.Popen[bytes]) -> bool:
    """Wait until the web server answers, so the URLs printed next work at once."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and web.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def _wait(children: list[tuple[str, subprocess.Popen[bytes]]], echo: Callable[[str], None]) -> int:
    while True:
        for name, child in children:
            code = child.poll()
            if code is not None:
                echo(f"{name} exited with code {code}; stopping the rest")
                return code or 1
        time.sleep(0.2)


def _stop_children(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for _, child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def serve_until_signal(serve: Callable[[], None], shutdown: Callable[[], None]) -> None:
    """Run a blocking server until SIGINT or SIGTERM, then shut it down cleanly."""
    import threading

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=shutdown, daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    serve()
