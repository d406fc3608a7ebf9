"""The deploy/ recipes, run for real: systemd units verified, nginx in front of gunicorn."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from redis import Redis

from service.config import Settings
from service.delivery import record_key
from service.embedded_redis import free_port
from service.signature import sign

from .processes import REPO, Stack, stop, wait_for

DEPLOY = REPO / "deploy"
KEY = "deploy-key"


def test_env_example_lists_every_setting_and_parses() -> None:
    names_read = set(
        re.findall(r'"((?:BULKHOOK|REDIS)_[A-Z_]+)"', (REPO / "service" / "config.py").read_text())
    )
    example = (DEPLOY / "env.example").read_text()
    listed = set(re.findall(r"^#? ?((?:BULKHOOK|REDIS)_[A-Z_]+)=", example, flags=re.M))
    # A _FILE variant is read through the base name; everything read is listed.
    assert {n for n in names_read} - listed == set()
    values = dict(line.split("=", 1) for line in example.splitlines()
                  if line and not line.startswith("#"))  # fmt: skip
    settings = Settings.from_env(values)
    assert settings.signature_keys == ("change-me",)
    assert settings.retry_intervals == (10, 60, 300, 1800, 7200)


_KEPT_AFTER_A_LARGE_FREE = """
import runpy, sys
from pathlib import Path

def rss_kib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith("VmRSS"))
    return int(line.split()[1])

if sys.argv[1] == "hooked":
    runpy.run_path(sys.argv[2])["post_fork"](None, None)
size = 8 * 1024 * 1024
first = b"x" * size
del first  # glibc, left alone, raises its mapping threshold here
before = rss_kib()
second = b"y" * size
del second
print(rss_kib() - before)
"""


@pytest.mark.parametrize("mode", ["hooked", "default"])
def test_web_workers_give_large_bodies_memory_back(mode: str, tmp_path: Path) -> None:
    """gunicorn.conf.py's post_fork: memory of a large body goes back to the system when it
    is freed. The default allocator keeps it (the control case shows the check can fail)."""
    # A metrics folder of its own, or the config makes a temporary one and leaves it.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    kept = subprocess.run(
        [sys.executable, "-c", _KEPT_AFTER_A_LARGE_FREE, mode, str(DEPLOY / "gunicorn.conf.py")],
        capture_output=True, text=True, check=True, cwd=REPO, env=env,
    ).stdout  # fmt: skip
    kept_mib = int(kept) / 1024
    if mode == "hooked":
        assert kept_mib < 1, f"{kept_mib:.1f} MiB kept"
    else:
        assert kept_mib > 7, f"{kept_mib:.1f} MiB kept"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    # Units name /opt/bulkhook; here the project lives in this checkout, so point them at it
    # (systemd-analyze checks that the programs they start exist).
    for unit in (DEPLOY / "systemd").iterdir():
        text = unit.read_text().replace("/opt/bulkhook", str(REPO))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "bulkhook-web.service", "bulkhook-worker@2.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings


class Nginx:
    """Debian's nginx with deploy/nginx/bulkhook-proxy.conf, unchanged, in front of a stack."""

    def __init__(self, tmp: Path, upstream_port: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (tmp / "nginx-logs").mkdir()
        conf = tmp / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {tmp}/nginx-logs/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream bulkhook_web {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{self.port};
        include {DEPLOY / "nginx" / "bulkhook-proxy.conf"};
    }}
}}
""")
        check = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", str(tmp)],
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _answers(self.base + "/healthz"), what="nginx to serve")

    def close(self) -> None:
        stop(self.process)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def proxied(tmp_path_factory) -> Iterator[tuple[Stack, Nginx]]:
    if shutil.which("nginx") is None:
        pytest.skip("needs nginx (.ci/run installs it: apt-get install nginx)")
    tmp = tmp_path_factory.mktemp("nginx")
    with contextlib.ExitStack() as cleanup:  # the stack stops even if nginx fails to start
        stack = Stack(tmp, KEY, BULKHOOK_TRUSTED_PROXIES="1", BULKHOOK_HANDLERS="log")
        cleanup.callback(stack.close)
        nginx = Nginx(tmp, stack.port)
        cleanup.callback(nginx.close)
        yield stack, nginx


def callback() -> bytes:
    return json.dumps({"id": uuid.uuid4().hex, "status": "COMPLETED"}).encode()


@pytest.mark.slow
def test_signed_callback_verifies_through_nginx_and_keeps_the_real_client_address(proxied):
    stack, nginx = proxied
    body = callback()
    answer = requests.post(
        nginx.base + "/callbacks/bulk", data=body, timeout=30,
        headers={"Elements-Webhook-Signature": sign(KEY, body), "X-Forwarded-For": "6.6.6.6"},
    )  # fmt: skip

    assert answer.status_code == 202
    record = Redis.from_url(stack.redis.url).hgetall(record_key(answer.json()["delivery_id"]))
    # nginx appended the real address; trusting exactly one proxy ignores the spoofed one.
    assert record[b"remote_addr"] == b"127.0.0.1"


@pytest.mark.slow
def test_body_over_the_limit_gets_413_in_json_from_nginx(proxied):
    _, nginx = proxied
    body = b"{" + b" " * (17 * 1024 * 1024) + b"}"
    answer = requests.post(nginx.base + "/callbacks/bulk", data=body, timeout=60,
                           headers={"Elements-Webhook-Signature": sign(KEY, body)})  # fmt: skip
    assert answer.status_code == 413
    assert answer.json()["status"] == "too_large"


@pytest.mark.slow
def test_slow_senders_do_not_block_other_callbacks(proxied):
    stack, nginx = proxied
    # Slow senders, each with a connection open and a body begun.
    slow = []
    for _ in range(24):
        sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=30)
        sock.sendall(b"POST /callbacks/bulk HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        slow.append(sock)
    try:

        def send(_: int) -> int:
            body = callback()
            return requests.post(nginx.base + "/callbacks/bulk", data=body, timeout=20,
                                 headers={"Elements-Webhook-Signature": sign(KEY, body)}
                                 ).status_code  # fmt: skip

        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(send, range(40)))
        assert codes == [202] * 40
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.slow
def test_paths_the_proxy_does_not_serve_get_404_in_json(proxied):
    _, nginx = proxied
    answer = requests.get(nginx.base + "/admin", timeout=10)
    assert answer.status_code == 404
    assert answer.json()["status"] == "not_found"
