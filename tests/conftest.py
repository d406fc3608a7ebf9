"""Fixtures: a real redis-server per test run, the app, its client, signed requests, workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq.serializers import JSONSerializer

from service import create_app, drain
from service.config import QUEUE_NAME
from service.embedded_redis import EmbeddedRedis
from service.runtime import EXTENSION
from service.signature import sign
from service.worker import InProcessWorker

KEY = "test-signature-key"
"""The signature key the app under test is configured with."""

RETRY_INTERVALS = "0,0"
"""Two retries, at once: a failing delivery's whole life fits in one burst of a worker."""

BULK_BODY = b'{"id": "42114492", "status": "COMPLETED", "fileFormat": "csv", "instanceId": 425904}'
"""A bulk callback as Open Connectors sends it (keys seen in vendor code)."""

EVENTS_BODY = (
    b'{"message": {"eventId": "ev-1", "elementKey": "sfdc", "instanceId": 123, '
    b'"events": [{"objectType": "Contact", "objectId": "003x", "eventType": "UPDATED", '
    b'"elementKey": "sfdc", "date": "2016-06-01T04:09:10Z"}], "raw": {}}}'
)
"""An event notification in the modern envelope."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's own bulkhook settings out of the tests."""
    for name in list(os.environ):
        if name.startswith(("BULKHOOK_", "REDIS_URL", "RQ_")):
            monkeypatch.delenv(name)
    # Workers read their settings from the environment: the retry policy of `config` below.
    monkeypatch.setenv("BULKHOOK_RETRY_INTERVALS", RETRY_INTERVALS)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server on an ephemeral port for the whole run."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The shared server's URL, emptied before each test."""
    Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def conn(redis_url: str) -> Iterator[Redis]:
    """A plain client on the test Redis, for looking at what the service wrote."""
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def config(redis_url: str) -> dict[str, str]:
    """Environment-style settings for the app under test; tests may change them first."""
    return {
        "REDIS_URL": redis_url,
        "BULKHOOK_SIGNATURE_KEY": KEY,
        "BULKHOOK_RETRY_INTERVALS": RETRY_INTERVALS,
    }


@pytest.fixture
def app(config: dict[str, str]):
    """The Flask app, built by the factory from `config`; its Redis client closed after."""
    made = create_app(config)
    yield made
    # Left to the garbage collector, a client's sockets can be finalised before the client
    # (a reference cycle): an unclosed-socket ResourceWarning, an error under -W error.
    made.extensions[EXTENSION].redis.close()


@pytest.fixture
def client(app):
    """Flask's test client for `app`."""
    return app.test_client()


def post(client, kind: str, body: bytes, *, key: str | None = KEY, headers=None):
    """POST `body` to /callbacks/<kind>, signed with `key` unless it is None."""
    all_headers = {"Content-Type": "application/json"}
    if key is not None:
        all_headers["Elements-Webhook-Signature"] = sign(key, body)
    all_headers.update(headers or {})
    return client.post(f"/callbacks/{kind}", data=body, headers=all_headers)


def work(conn: Redis) -> None:
    """Run a real RQ worker in this process until the queue is empty (its drains do not
    wait for more, as with `bulkhook worker --burst`)."""
    drain.LINGER_SECONDS = 0.0
    # bulkhook's SimpleWorker: RQ's own can wait a minute for its pubsub thread as it stops.
    InProcessWorker([QUEUE_NAME], connection=conn, serializer=JSONSerializer).work(burst=True)


@pytest.fixture
def handler_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file the test handlers append to; set in the environment workers read."""
    path = tmp_path / "handled.jsonl"
    monkeypatch.setenv("BULKHOOK_TEST_OUTPUT", str(path))
    return path
