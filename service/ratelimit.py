"""A calls-per-second limit shared by every process on one Redis (fixed one-second windows)."""

from __future__ import annotations

import time

from redis import Redis, RedisError

from .config import KEY_PREFIX


class RateLimiter:
    """Blocks until one more call fits in the current second's budget.

    Shared through Redis so that a burst of callbacks spread over many workers still makes
    at most `per_second` API calls; without Redis (the CLI), the limit is per process.
    """

    def __init__(self, per_second: int, conn: Redis | None = None, name: str = "api") -> None:
        self.per_second = per_second
        self.conn = conn
        self.key = f"{KEY_PREFIX}ratelimit:{name}"
        self._window = -1
        self._used = 0

    def wait(self) -> None:
        """Return when a call may be made."""
        while True:
            now = time.time()
            window = int(now)
            if self._count(window) <= self.per_second:
                return
            time.sleep(window + 1 - now)

    def _count(self, window: int) -> int:
        if self.conn is not None:
            key = f"{self.key}:{window}"
            try:
                with self.conn.pipeline() as pipe:
                    pipe.incr(key)
                    pipe.expire(key, 5)
                    count, _ = pipe.execute()
                return int(count)
            except RedisError:
                pass  # Redis trouble must not stop API calls; fall back to this process
        if window != self._window:
            self._window, self._used = window, 0
        self._used += 1
        return self._used
