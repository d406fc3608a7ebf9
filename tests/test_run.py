"""`bulkhook run`, as `make run` uses it: an embedded Redis, web and worker, stopped by Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from service.embedded_redis import free_port
from service.signature import sign

from .processes import REPO, environment, port_is_open, stop, wait_for

pytestmark = pytest.mark.slow


def test_run_starts_embedded_redis_web_and_worker_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        run = subprocess.Popen(
            [
                "bulkhook",
                "run",
                "--port",
                str(port),
                "--generate-key",
                "var/signature.key",
                "--gunicorn-config",
                str(REPO / "deploy" / "gunicorn.conf.py"),
            ],
            cwd=tmp_path,
            env=environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: b"callback URLs" in log_path.read_bytes(), what="run to start")
            output = log_path.read_text()
            assert "REDIS_URL is not set: started an embedded Redis" in output
            assert f"http://127.0.0.1:{port}/callbacks/bulk" in output
            assert f"http://127.0.0.1:{port}/callbacks/events" in output
            assert "generated one into var/signature.key" in output
            key = (tmp_path / "var" / "signature.key").read_text().strip()
            assert key not in output  # the key's path is shown, never the key
            redis_port = int(
                (tmp_path / "var" / "redis.url").read_text().split(":")[2].split("/")[0]
            )

            body = b'{"id": "run-1", "status": "COMPLETED"}'
            answer = requests.post(
                f"http://127.0.0.1:{port}/callbacks/bulk",
                data=body,
                headers={"Elements-Webhook-Signature": sign(key, body)},
                timeout=30,
            )
            assert answer.status_code == 202

            def processed() -> bool:
                inbox = subprocess.run(
                    ["bulkhook", "inbox", "--json"],
                    cwd=tmp_path,
                    env=environment(),
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                return any(
                    json.loads(line)["state"] == "done" for line in inbox.stdout.splitlines()
                )

            wait_for(processed, what="the worker to process the callback")
        finally:
            code = stop(run, signal.SIGINT)

    assert code == 0
    assert not port_is_open(port)
    assert not port_is_open(redis_port)
    assert not (tmp_path / "var" / "redis.url").exists()
    assert (tmp_path / "var" / "redis" / "redis.log").exists()


def test_run_without_a_key_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bulkhook", "run", "--port", str(free_port())],
        cwd=tmp_path,
        env=environment(REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "no signature key: set BULKHOOK_SIGNATURE_KEY" in result.stderr
