"""Helpers for tests that run bulkhook as real processes: Procfile lines, waiting, env."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests

REPO = Path(__file__).resolve().parent.parent
"""The repository root: Procfile paths are relative to it."""

T = TypeVar("T")


def procfile_command(process: str) -> list[str]:
    """The command line of one Procfile process, split as a shell would."""
    for line in (REPO / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            return shlex.split(command.strip())
    raise KeyError(process)


def environment(**settings: str) -> dict[str, str]:
    """The process environment for a child: the venv's bin first, the tests importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHOOK_", "REDIS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env.update(settings)
    return env


def json_lines(path: Path) -> list[dict]:
    """The JSON lines of a log file (a line being written is skipped)."""
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until GET `url` answers, failing early if the process died."""

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before serving")
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(answers, timeout, f"{url} to answer")


def port_is_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def send_raw(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send `parts` on one connection to 127.0.0.1:port, `pause` s apart, byte for byte as a
    hostile or slow client could, then read until the server closes: the raw answer (b"" if
    it closed without one). By hand: HTTP client libraries refuse much of what is worth sending.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            for part in parts:
                sock.sendall(part)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the rest was sent: the answer may still be there
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def stop(process: subprocess.Popen, sig: int = 15, timeout: float = 30.0) -> int:
    """Send `sig` and wait for the exit code; kill if it does not come.

    A gunicorn master passes the signal on to its workers, and a worker forked an instant
    before can miss it: until it sets up its own handlers it has the master's, which only
    queue the signal (seen once in CI: a worker booted as the master took SIGTERM, and ran on
    to the graceful timeout). So gunicorn's workers still there after a few seconds are sent
    it again; uvicorn's worker takes a second SIGTERM as the first.
    """
    if process.poll() is None:
        process.send_signal(sig)
    deadline = time.monotonic() + timeout
    again = "gunicorn" in " ".join(map(str, process.args))
    while True:
        try:
            return process.wait(timeout=min(_SIGNAL_AGAIN_SECONDS if again else timeout,
                                            max(deadline - time.monotonic(), 0)))  # fmt: skip
        except subprocess.TimeoutExpired:
            if time.monotonic() < deadline and again:
                again = False
                for worker in children(process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker, sig)
                continue
            process.kill()
            process.wait()
            raise


_SIGNAL_AGAIN_SECONDS = 5.0
"""A gunicorn stops in well under a second when every worker had the signal."""


class Stack:
    """Redis, the Procfile's web and worker processes, and where to reach them."""

    def __init__(self, tmp: Path, key: str, **settings: str) -> None:
        from redis import Redis

        from service.embedded_redis import EmbeddedRedis, free_port

        self.tmp = tmp
        self.redis = EmbeddedRedis(tmp / "redis").start()
        self.port = int(settings.pop("PORT", None) or free_port())
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.output = tmp / "handled.jsonl"
        self.env = environment(
            PORT=str(self.port),
            REDIS_URL=self.redis.url,
            BULKHOOK_SIGNATURE_KEY=key,
            BULKHOOK_TEST_OUTPUT=str(self.output),
            BULKHOOK_WORK_DIR=str(tmp / "work"),
            BULKHOOK_OUTBOX_DIR=str(tmp / "outbox"),
            **settings,
        )
        self.log_files: list = []
        self.web = self._start("web")
        self.worker = self._start("worker")
        self.conn = Redis.from_url(self.redis.url)
        try:
            wait_until_serving(f"{self.base}/readyz", self.web)
        except BaseException:
            self.close()  # a web that never served leaves no worker and Redis behind
            raise

    def _start(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self.log_files.append(log)
        return subprocess.Popen(
            procfile_command(name), cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def post(self, body: bytes, kind: str = "bulk", key: str | None = None) -> requests.Response:
        from service.signature import sign

        headers = {"Elements-Webhook-Signature": sign(key or self.key, body)}
        return requests.post(
            f"{self.base}/callbacks/{kind}", data=body, headers=headers, timeout=30
        )

    def bulkhook(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a bulkhook command with this stack's environment."""
        return subprocess.run(
            ["bulkhook", *args],
            cwd=self.tmp,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def wait_delivery_done(self, delivery_id: str) -> dict[bytes, bytes]:
        from service.delivery import record_key

        def done() -> dict[bytes, bytes] | None:
            record = self.conn.hgetall(record_key(delivery_id))
            return record if record.get(b"state") == b"done" else None

        return wait_for(done, what=f"delivery {delivery_id} to be processed")

    def wait_job_done(self, job_id: str, timeout: float = 30.0) -> dict[str, str]:
        from service import jobs

        def done() -> dict[str, str] | None:
            record = jobs.get(self.conn, job_id)
            return record if record and record.get("state") == jobs.DONE else None

        return wait_for(done, timeout, what=f"job {job_id} to be processed")

    def close(self) -> None:
        # Every part is stopped even if one fails to stop (then raised after the rest).
        with contextlib.ExitStack() as cleanup:
            for log in self.log_files:
                cleanup.callback(log.close)
            cleanup.callback(self.conn.close)
            cleanup.callback(self.redis.stop)
            for process in (self.worker, self.web):
                cleanup.callback(stop, process)


class SimulatorProcess:
    """`bulkhook simulator` as a real HTTP server, with its switches reachable."""

    TOKEN = "sim-element-token"
    SECRET = "sim-user-secret"

    def __init__(self, tmp: Path, key: str) -> None:
        from service.embedded_redis import free_port

        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/elements/api-v2"
        self.key = key
        self.log = open(tmp / "simulator.log", "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            ["bulkhook", "simulator", "--port", str(self.port), "--step-seconds", "0.3"],
            env=environment(**self.settings()),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until_serving(f"{self.root}/_simulator/switches", self.process)
        self.defaults = requests.get(f"{self.root}/_simulator/switches", timeout=5).json()

    def settings(self) -> dict[str, str]:
        """The settings that point a bulkhook client at this simulator."""
        return {
            "BULKHOOK_OPENCONNECTORS_URL": self.url,
            "BULKHOOK_ELEMENT_TOKEN": self.TOKEN,
            "BULKHOOK_USER_SECRET": self.SECRET,
            "BULKHOOK_SIGNATURE_KEY": self.key,
        }

    def switch(self, **changes: object) -> None:
        """Set switches for the next jobs (the rest back to their defaults)."""
        response = requests.post(
            f"{self.root}/_simulator/switches", json={**self.defaults, **changes}, timeout=5
        )
        response.raise_for_status()

    def callbacks(self, job_id: str | None = None) -> list[dict]:
        entries = requests.get(f"{self.root}/_simulator/callbacks", timeout=5).json()
        return [e for e in entries if job_id is None or e["job_id"] == job_id]

    def requests_seen(self) -> dict[str, int]:
        return requests.get(f"{self.root}/_simulator/requests", timeout=5).json()

    def close(self) -> None:
        stop(self.process)
        self.log.close()


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: read after its closing one.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """A process's resident memory now (VmRSS) and at its peak (VmHWM), in KiB, from /proc."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines)
            if k in ("VmRSS", "VmHWM")}  # fmt: skip
