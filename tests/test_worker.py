"""The worker process around RQ's: its settings, its stop, its restarts after Redis failures."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from service import create_app, worker
from service.config import QUEUE_NAME, Settings
from service.delivery import record_key

from .conftest import KEY, post
from .processes import REPO, environment, procfile_command, stop, wait_for


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


@pytest.mark.slow
def test_a_drain_that_found_nothing_waits_for_the_next_delivery(redis_url, tmp_path: Path):
    """The Procfile's worker: a delivery accepted while a drain is waiting for more is taken
    by that drain, not left for the next drain task (RQ's dequeue and a fork later)."""
    conn = Redis.from_url(redis_url)
    client = create_app({"REDIS_URL": redis_url, "BULKHOOK_SIGNATURE_KEY": KEY}).test_client()
    env = environment(REDIS_URL=redis_url, BULKHOOK_SIGNATURE_KEY=KEY)
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(procfile_command("worker"), cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        try:
            ids = []
            for n in range(2):
                body = json.dumps({"id": f"linger-{n}", "status": "COMPLETED"}).encode()
                ids.append(post(client, "bulk", body).get_json()["delivery_id"])
                wait_for(lambda: conn.hget(record_key(ids[-1]), "state") == b"done", 30,
                         f"delivery {n} to be processed")  # fmt: skip
            # The second delivery also queued a drain (the first had freed the flag): it runs
            # once the first has ended, and finds nothing.
            queue = Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)
            second_drain = queue.fetch_job(f"drain-{ids[1]}")
            assert second_drain is not None
            wait_for(second_drain.return_value, 30, "the second drain to end")
        finally:
            assert stop(process) == 0, log_path.read_text()[-3000:]

    first, second = (conn.hget(record_key(i), "taken_by").decode() for i in ids)
    assert first == second == f"drain-{ids[0]}"
    assert queue.fetch_job(first).return_value() == "2 done, 0 handed to RQ"
    assert second_drain.return_value() == "0 done, 0 handed to RQ"
    conn.close()
