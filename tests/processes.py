"""Helpers for tests that run bulkhook as real processes: Procfile lines, waiting, env."""

from __future__ import annotations

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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKHOOK_", "REDIS_URL"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env.update(settings)
    return env


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


def stop(process: subprocess.Popen, sig: int = 15, timeout: float = 30.0) -> int:
    """Send `sig` and wait for the exit code; kill if it does not come."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
