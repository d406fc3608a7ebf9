"""`bulkhook demo` (`make demo`): the whole loop offline, against the simulator.

Starts the simulator and `bulkhook run` (embedded Redis, web, worker), uploads the seed's
contacts through `bulkhook bulk upload`, follows the job to its archived outcome, and stops
everything. Every step is a real command a user could type.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .embedded_redis import free_port
from .simulator import BASE_PATH

TIMEOUT_SECONDS = 60.0
"""Longest the demo waits for any one step."""


def run(workdir: Path, contacts: Path, echo: Callable[[str], None]) -> int:
    """Run the demo in `workdir` (emptied first); return an exit code."""
    contacts, workdir = contacts.resolve(), workdir.resolve()
    if not contacts.exists():
        echo(f"no contacts file at {contacts}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    sim_port, web_port = free_port(), free_port()
    env = _environment(workdir, sim_port, web_port)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        echo(f"1. simulator of the Open Connectors Bulk API on port {sim_port}")
        processes.append(
            _start(
                ["simulator", "--port", str(sim_port), "--step-seconds", "1"],
                workdir,
                env,
                "simulator.log",
            )
        )
        _wait_http(f"http://127.0.0.1:{sim_port}/_simulator/switches")
        echo(f"2. bulkhook run on port {web_port}: embedded Redis, web server, worker")
        processes.append(_start(["run", "--port", str(web_port)], workdir, env, "run.log"))
        _wait_http(f"http://127.0.0.1:{web_port}/readyz")

        echo(f"3. bulkhook bulk upload contacts {contacts}")
        upload = _bulkhook(["bulk", "upload", "contacts", str(contacts)], workdir, env)
        job_id = str(json.loads(upload.stdout)["id"])
        echo(f"   job {job_id} started, callback URL with its own token")

        echo("4. waiting for the job to finish, its callback and the pipeline ...")
        record = _wait(lambda: _job(workdir, env, job_id), "the job to be processed")
        for delivery in _inbox(workdir, env):
            if delivery.get("job_id") == job_id:
                echo(
                    f"   callback verified and accepted: delivery {delivery['id']} "
                    f"({delivery['status']}), {delivery['state']}"
                )
        echo(
            f"   pipeline: job {job_id} {record['status']}, re-read from the API, "
            "errors fetched, handlers run"
        )

        archive = workdir / "outbox" / job_id
        status = json.loads((archive / "status.json").read_text())
        echo(f"5. archived outcome in {archive}:")
        echo(f"   {status['records_count']} records, {status['errors_count']} error(s)")
        for line in (archive / "errors.jsonl").read_text().splitlines():
            echo(f"   error: {json.loads(line)['error']}")
        return 0
    except (subprocess.CalledProcessError, TimeoutError, OSError, ValueError, KeyError) as exc:
        echo(f"demo failed: {exc}; logs are in {workdir}")
        return 1
    finally:
        echo("6. stopping everything")
        for process in reversed(processes):
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _environment(workdir: Path, sim_port: int, web_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKHOOK_")}
    env.pop("REDIS_URL", None)
    env.update(
        BULKHOOK_OPENCONNECTORS_URL=f"http://127.0.0.1:{sim_port}{BASE_PATH}",
        BULKHOOK_ELEMENT_TOKEN="demo-element-token",
        BULKHOOK_USER_SECRET="demo-user-secret",
        BULKHOOK_SIGNATURE_KEY=secrets.token_urlsafe(24),
        BULKHOOK_PUBLIC_URL=f"http://127.0.0.1:{web_port}",
        BULKHOOK_HANDLERS="archive,log",
        BULKHOOK_OUTBOX_DIR=str(workdir / "outbox"),
        BULKHOOK_WORK_DIR=str(workdir / "work"),
    )
    return env


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "service", *args]


def _start(args: list[str], cwd: Path, env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    with open(cwd / log, "wb") as out:
        return subprocess.Popen(
            _command(args),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _bulkhook(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT_SECONDS,
    )


def _job(cwd: Path, env: dict[str, str], job_id: str) -> dict[str, Any] | None:
    for line in _bulkhook(["jobs", "--json"], cwd, env).stdout.splitlines():
        record = json.loads(line)
        if record.get("id") == job_id and record.get("state") == "done":
            return dict(record)
    return None


def _inbox(cwd: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    lines = _bulkhook(["inbox", "--json"], cwd, env).stdout.splitlines()
    return [json.loads(line) for line in lines]


def _wait_http(url: str) -> None:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    _wait(answers, url)


def _wait(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(f"gave up waiting for {what}")
