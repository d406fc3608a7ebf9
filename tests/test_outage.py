"""Redis down or hanging: 503 with Retry-After, nothing half-written, and recovery by itself."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from service import create_app
from service.config import QUEUE_NAME, RETRY_AFTER_SECONDS
from service.delivery import record_key
from service.drain import READY_KEY
from service.embedded_redis import EmbeddedRedis

from .conftest import BULK_BODY, EVENTS_BODY, KEY, post
from .handlers import read
from .processes import REPO, environment, procfile_command, stop, wait_for


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server this test may stop, freeze and restart."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def outage_client(own_redis: EmbeddedRedis):
    app = create_app(
        {
            "REDIS_URL": own_redis.url,
            "BULKHOOK_SIGNATURE_KEY": KEY,
            "BULKHOOK_REDIS_TIMEOUT_SECONDS": "0.5",
        }
    )
    return app.test_client()


def bulkhook_keys(url: str) -> list[bytes]:
    return list(Redis.from_url(url).scan_iter("bulkhook:*"))


def test_redis_stopped_gets_503_with_retry_after_and_records_nothing(own_redis, outage_client):
    own_redis.stop()

    response = post(outage_client, "bulk", BULK_BODY)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert response.get_json() == {
        "status": "unavailable",
        "detail": "cannot record the callback now; retry later",
    }
    own_redis.start()  # same port, same data directory (append-only file on)
    assert bulkhook_keys(own_redis.url) == []


def test_readyz_fails_but_healthz_holds_while_redis_is_down(own_redis, outage_client):
    own_redis.stop()

    assert outage_client.get("/healthz").status_code == 200
    ready = outage_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "unavailable"


def test_service_resumes_by_itself_when_redis_returns(own_redis, outage_client):
    assert post(outage_client, "events", EVENTS_BODY).status_code == 202
    own_redis.stop()
    assert post(outage_client, "bulk", BULK_BODY).status_code == 503

    own_redis.start()

    assert post(outage_client, "bulk", BULK_BODY).status_code == 202
    assert outage_client.get("/readyz").status_code == 200


def test_hanging_redis_gets_503_instead_of_a_hung_request(own_redis, outage_client):
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        response = post(outage_client, "bulk", BULK_BODY)
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    # Whatever reached Redis before the timeout, the sender's retry is taken exactly once.
    retried = post(outage_client, "bulk", BULK_BODY)
    assert retried.status_code in (200, 202)
    conn = Redis.from_url(own_redis.url)
    assert conn.llen(READY_KEY) == 1
    assert Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer).count == 1  # one drain


def test_write_no_replica_confirmed_gets_503_and_the_retry_is_a_duplicate(own_redis) -> None:
    """BULKHOOK_REDIS_MIN_REPLICAS=1 on a Redis without replicas: WAIT times out, so 503.

    The write itself did reach the primary: the sender's retry is answered as a duplicate.
    """
    settings = {"REDIS_URL": own_redis.url, "BULKHOOK_SIGNATURE_KEY": KEY}
    client = create_app({**settings, "BULKHOOK_REDIS_MIN_REPLICAS": "1",
                         "BULKHOOK_REDIS_REPLICA_WAIT_MS": "50"}).test_client()  # fmt: skip

    first = post(client, "bulk", BULK_BODY)
    again = post(create_app(settings).test_client(), "bulk", BULK_BODY)

    assert first.status_code == 503
    assert first.get_json()["status"] == "unavailable"
    assert first.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert again.status_code == 200
    assert again.get_json()["status"] == "duplicate"


@pytest.mark.slow
def test_worker_started_while_redis_is_down_waits_for_it_and_then_works(
    own_redis, tmp_path: Path
) -> None:
    """RQ's worker gives up when Redis fails it while starting; `bulkhook worker` starts it
    again with backoff instead of exiting, so no supervisor is needed to bring it back."""
    own_redis.stop()
    output = tmp_path / "handled.jsonl"
    log_path = tmp_path / "worker.log"
    env = environment(REDIS_URL=own_redis.url, BULKHOOK_SIGNATURE_KEY=KEY,
                      BULKHOOK_HANDLERS="tests.handlers.record", BULKHOOK_TEST_OUTPUT=str(output),
                      BULKHOOK_REDIS_TIMEOUT_SECONDS="0.5", BULKHOOK_LOG_FORMAT="text")  # fmt: skip
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(procfile_command("worker"), cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for(lambda: log_path.read_text().count("starting it again") >= 2, 30,
                     "two failed starts")  # fmt: skip
            assert worker.poll() is None, log_path.read_text()[-3000:]

            own_redis.start()
            client = create_app(
                {"REDIS_URL": own_redis.url, "BULKHOOK_SIGNATURE_KEY": KEY}
            ).test_client()
            delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]

            conn = Redis.from_url(own_redis.url)
            wait_for(lambda: conn.hget(record_key(delivery_id), "state") == b"done", 60,
                     "the restarted worker to process the delivery")  # fmt: skip
            assert [line["id"] for line in read(output)] == [delivery_id]
            conn.close()
        finally:
            code = stop(worker)
    assert code == 0, log_path.read_text()[-3000:]
