"""The worker process around RQ's: its settings, its stop, its restarts after Redis failures."""

from __future__ import annotations

import threading

from service import worker
from service.config import Settings

from .processes import wait_for


def test_unsubscribing_does_not_wait_for_the_pubsub_threads_minute(redis_url) -> None:
    """With redis-py 8, RQ's own unsubscribe could block for its pubsub sleep_time (60 s).

    That happens when the pubsub thread has read the unsubscribe reply before the thread is
    stopped: it then waits for a new subscription. Here that moment is made on purpose.
    """
    built = worker.build(Settings.from_env({"REDIS_URL": redis_url}))
    built.subscribe()
    pubsub = built.pubsub
    assert pubsub is not None
    wait_for(lambda: pubsub.subscribed, 10, "the subscription")
    pubsub.unsubscribe()
    wait_for(lambda: not pubsub.subscribed, 10, "the pubsub thread to read the reply")

    stopping = threading.Thread(target=built.unsubscribe, daemon=True)
    stopping.start()
    stopping.join(timeout=10)

    assert not stopping.is_alive(), "unsubscribe() is still waiting for the pubsub thread"
