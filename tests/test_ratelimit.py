"""The API rate limit is shared through Redis by every process."""

from __future__ import annotations

import time

from service.ratelimit import RateLimiter


def test_limiters_sharing_redis_share_one_budget(conn) -> None:
    first, second = RateLimiter(3, conn), RateLimiter(3, conn)
    # Start at the beginning of a second so the count below is exact.
    time.sleep(1 - time.time() % 1)
    started = time.time()

    for _ in range(3):
        first.wait()
        second.wait()

    # Six calls at three per second need a second window: the budget is not per limiter.
    assert int(time.time()) > int(started)


def test_limiter_without_redis_limits_its_own_process() -> None:
    limiter = RateLimiter(2)
    time.sleep(1 - time.time() % 1)
    started = time.time()
    for _ in range(3):
        limiter.wait()
    assert int(time.time()) > int(started)
