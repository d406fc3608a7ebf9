"""Every answer of the callback endpoints, through the app with a real Redis behind it."""

from __future__ import annotations

import io
import json
import logging
import tracemalloc

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from service import create_app
from service.config import QUEUE_NAME
from service.delivery import INBOX_KEY, record_key
from service.drain import READY_KEY
from service.signature import sign

from .conftest import BULK_BODY, EVENTS_BODY, KEY, post


def queued_ids(conn: Redis) -> list[str]:
    """Deliveries waiting for a drain, oldest first."""
    return [i.decode() for i in conn.lrange(READY_KEY, 0, -1)]


def task_ids(conn: Redis) -> list[str]:
    return Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer).get_job_ids()


def assert_nothing_recorded(conn: Redis) -> None:
    assert conn.zcard(INBOX_KEY) == 0
    assert queued_ids(conn) == []
    assert task_ids(conn) == []
    assert list(conn.scan_iter("bulkhook:*")) == []


def test_signed_bulk_callback_is_accepted_recorded_and_queued(client, conn) -> None:
    response = post(client, "bulk", BULK_BODY)

    assert response.status_code == 202
    answer = response.get_json()
    assert answer["status"] == "accepted"
    delivery_id = answer["delivery_id"]
    record = conn.hgetall(record_key(delivery_id))
    assert record[b"kind"] == b"bulk"
    assert record[b"job_id"] == b"42114492"
    assert record[b"status"] == b"COMPLETED"
    assert record[b"state"] == b"queued"
    assert record[b"body"] == BULK_BODY
    assert queued_ids(conn) == [delivery_id]


def test_signed_event_notification_is_accepted(client, conn) -> None:
    response = post(client, "events", EVENTS_BODY)

    assert response.status_code == 202
    record = conn.hgetall(record_key(response.get_json()["delivery_id"]))
    assert record[b"kind"] == b"events"
    assert record[b"event_id"] == b"ev-1"


def test_older_response_envelope_is_accepted(client) -> None:
    body = (
        b'{"eventId": 1088, "instanceId": 31, "notificationId": 1047, "response": {"events": []}}'
    )
    assert post(client, "events", body).status_code == 202


def test_tampered_body_is_rejected_with_401(client, conn) -> None:
    headers = {"Elements-Webhook-Signature": sign(KEY, BULK_BODY)}
    tampered = BULK_BODY.replace(b"COMPLETED", b"ERROR")

    response = post(client, "bulk", tampered, key=None, headers=headers)

    assert response.status_code == 401
    assert response.get_json() == {
        "status": "unauthorized",
        "detail": "signature does not match the body",
    }
    assert_nothing_recorded(conn)


def test_wrong_key_is_rejected_with_401(client, conn) -> None:
    response = post(client, "bulk", BULK_BODY, key="some-other-key")

    assert response.status_code == 401
    assert_nothing_recorded(conn)


def test_previous_key_is_accepted_during_rotation(config) -> None:
    config["BULKHOOK_SIGNATURE_KEY"] = "new-key"
    config["BULKHOOK_SIGNATURE_KEY_PREVIOUS"] = KEY
    client = create_app(config).test_client()

    assert post(client, "bulk", BULK_BODY, key="new-key").status_code == 202
    assert post(client, "events", EVENTS_BODY, key=KEY).status_code == 202
    assert post(client, "bulk", BULK_BODY, key="retired-key").status_code == 401


@pytest.mark.parametrize(
    "name",
    ["elements-webhook-signature", "ELEMENTS-WEBHOOK-SIGNATURE", "Elements-webhook-Signature"],
)
def test_header_name_in_any_case_is_accepted(client, name: str) -> None:
    response = post(client, "bulk", BULK_BODY, key=None, headers={name: sign(KEY, BULK_BODY)})
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "missing Elements-Webhook-Signature header"),
        ("", "empty Elements-Webhook-Signature header"),
        ("sha256=not base64!", "Elements-Webhook-Signature is not valid base64"),
        ("sha1=" + "A" * 28, "Elements-Webhook-Signature must start with 'sha256='"),
        ("sha256=" + "é" * 44, "Elements-Webhook-Signature is not valid base64"),
        (
            "sha256=" + "A" * 100_000,
            "Elements-Webhook-Signature header is too long to be a signature",
        ),
        ("sha256=AAAA", "Elements-Webhook-Signature does not hold a SHA-256 digest"),
    ],
)
def test_garbage_signature_headers_get_401_with_a_reason(client, conn, header, detail) -> None:
    headers = {} if header is None else {"Elements-Webhook-Signature": header}

    response = post(client, "bulk", BULK_BODY, key=None, headers=headers)

    assert response.status_code == 401
    assert response.get_json() == {"status": "unauthorized", "detail": detail}
    assert_nothing_recorded(conn)


@pytest.mark.parametrize(
    ("kind", "body", "detail"),
    [
        ("bulk", b"\xff\xfe{}", "body is not valid UTF-8 (byte 0)"),
        ("bulk", '{"id": "1", "status": "COMPLETED"}'.encode("utf-16"), "body is not valid UTF-8"),
        ("bulk", b"", "body is not valid JSON: Expecting value at line 1"),
        ("bulk", b"not json", "body is not valid JSON: Expecting value at line 1"),
        ("bulk", b'{"id": "1", "status": "COMPLETED"', "body is not valid JSON"),
        (
            "bulk",
            b'{"id": NaN, "status": "COMPLETED"}',
            "body is not valid JSON: NaN is not a JSON value",
        ),
        ("bulk", b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON: nested too deeply"),
        ("bulk", b'{"id": ' + b"9" * 5000 + b', "status": "COMPLETED"}', "body is not valid JSON"),
        (
            "bulk",
            b'[{"id": "1", "status": "COMPLETED"}]',
            "body must be a JSON object, not an array",
        ),
        ("bulk", b'"COMPLETED"', "body must be a JSON object, not a string"),
        ("bulk", b'{"status": "COMPLETED"}', "callback has no 'id'"),
        ("bulk", b'{"id": "1"}', "bulk callback has no 'status'"),
        (
            "bulk",
            b'{"id": true, "status": "COMPLETED"}',
            "'id' must be a string or a number, not a boolean",
        ),
        (
            "bulk",
            b'{"id": "", "status": "COMPLETED"}',
            "'id' must be a non-empty string or a number",
        ),
        ("bulk", b'{"id": 1.5, "status": "COMPLETED"}', "'id' must be a whole number, not 1.5"),
        (
            "bulk",
            b'{"id": {}, "status": "COMPLETED"}',
            "'id' must be a non-empty string or a number",
        ),
        ("bulk", b'{"id": "1", "status": 3}', "bulk callback 'status' must be a non-empty string"),
        (
            "bulk",
            b'{"id": "x\\ud800", "status": "COMPLETED"}',
            "'id' holds a lone surrogate (\\ud800), not text",
        ),
        (
            "bulk",
            b'{"id": "1", "status": "\\udfff"}',
            "'status' holds a lone surrogate (\\udfff), not text",
        ),
        (
            "events",
            b'{"message": {"eventId": "\\udc80"}}',
            "'eventId' holds a lone surrogate (\\udc80), not text",
        ),
        (
            "events",
            b'{"events": []}',
            "event notification needs a 'message' (or older 'response') object",
        ),
        ("events", b'{"message": "hello"}', "event notification 'message' must be a JSON object"),
        (
            "events",
            b'{"eventId": 1, "response": []}',
            "event notification 'response' must be a JSON object",
        ),
        (
            "events",
            b'{"message": {"eventId": false}}',
            "'eventId' must be a string or a number, not a boolean",
        ),
    ],
)
def test_bad_bodies_get_400_after_a_good_signature(client, conn, kind, body, detail) -> None:
    response = post(client, kind, body)

    assert response.status_code == 400
    answer = response.get_json()
    assert answer["status"] == "malformed"
    assert answer["detail"].startswith(detail)
    assert_nothing_recorded(conn)


def test_bad_body_with_bad_signature_gets_401_not_400(client) -> None:
    response = post(client, "bulk", b"not json", key="wrong")
    assert response.status_code == 401


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None],
)
def test_content_type_does_not_matter_and_never_consumes_the_body(client, content_type) -> None:
    headers = {"Elements-Webhook-Signature": sign(KEY, BULK_BODY)}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/callbacks/bulk", data=BULK_BODY, headers=headers)
    assert response.status_code == 202


def test_body_over_the_limit_gets_413(config, conn) -> None:
    config["BULKHOOK_MAX_BODY_BYTES"] = "1024"
    client = create_app(config).test_client()
    body = json.dumps({"id": "1", "status": "COMPLETED", "pad": "x" * 2000}).encode()

    response = post(client, "bulk", body)

    assert response.status_code == 413
    assert response.get_json()["status"] == "too_large"
    assert_nothing_recorded(conn)


def test_body_at_the_limit_is_accepted(config) -> None:
    body = json.dumps({"id": "1", "status": "COMPLETED", "pad": ""}).encode()
    body = body.replace(b'""', b'"' + b"x" * (1024 - len(body)) + b'"')
    assert len(body) == 1024
    config["BULKHOOK_MAX_BODY_BYTES"] = "1024"

    assert post(create_app(config).test_client(), "bulk", body).status_code == 202


def test_a_large_body_is_held_at_most_twice_while_it_is_taken(app, conn) -> None:
    """Bytes, decoded text and parsed document are never all alive at once: the bench's
    10 MiB target is at most 2 copies in the web worker (3 before, measured)."""
    size = 8 * 1024 * 1024
    doc = json.dumps({"message": {"eventId": "big-1", "raw": {"pad": ""}}})
    body = doc.replace('"pad": ""', '"pad": "' + "x" * (size - len(doc)) + '"').encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/callbacks/events", "QUERY_STRING": "",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(size),
               "HTTP_ELEMENTS_WEBHOOK_SIGNATURE": sign(KEY, body), "REMOTE_ADDR": "127.0.0.1",
               "SERVER_NAME": "test", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(body)}  # fmt: skip
    statuses = []

    tracemalloc.start()
    try:
        answer = app.wsgi_app(environ, lambda status, headers: statuses.append(status))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert statuses == ["202 Accepted"], answer
    assert peak < 2.1 * size, f"{peak / size:.2f} copies"
    delivery_id = json.loads(b"".join(answer))["delivery_id"]
    assert conn.hget(record_key(delivery_id), "body") == body


def test_the_recorded_body_is_the_very_bytes_received(client, conn) -> None:
    body = json.dumps({"id": "j-1", "status": "COMPLETED", "note": "Zoë 🚀 \\u00e9"},
                      ensure_ascii=False).encode()  # fmt: skip

    delivery_id = post(client, "bulk", body).get_json()["delivery_id"]

    assert conn.hget(record_key(delivery_id), "body") == body


def test_repeated_bulk_callback_gets_200_duplicate_and_one_task(client, conn) -> None:
    first = post(client, "bulk", BULK_BODY)
    second = post(client, "bulk", BULK_BODY)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.get_json() == {
        "status": "duplicate",
        "detail": "already accepted; not queued again",
        "delivery_id": first.get_json()["delivery_id"],
    }
    assert queued_ids(conn) == [first.get_json()["delivery_id"]]


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (b'{"id": "7", "status": "COMPLETED"}', b'{"id": 7, "status": "COMPLETE"}'),
        (b'{"id": 7.0, "status": "completed"}', b'{"id": "7", "status": "COMPLETED", "x": 1}'),
        (b'{"id": "7", "status": "CANCELED"}', b'{"id": "7", "status": "CANCELLED"}'),
    ],
)
def test_bulk_duplicates_are_found_across_id_types_and_status_spellings(client, first, again):
    assert post(client, "bulk", first).status_code == 202
    assert post(client, "bulk", again).status_code == 200


def test_same_job_with_a_new_status_is_a_new_delivery(client) -> None:
    assert post(client, "bulk", b'{"id": "7", "status": "RUNNING"}').status_code == 202
    assert post(client, "bulk", b'{"id": "7", "status": "COMPLETED"}').status_code == 202


def test_events_are_deduplicated_by_event_id(client) -> None:
    other_body = EVENTS_BODY.replace(b'"raw": {}', b'"raw": {"again": true}')
    assert post(client, "events", EVENTS_BODY).status_code == 202
    assert post(client, "events", other_body).status_code == 200


def test_events_without_event_id_are_deduplicated_by_webhook_id(client) -> None:
    body_a = b'{"message": {"events": [{"objectId": "a"}]}}'
    body_b = b'{"message": {"events": [{"objectId": "b"}]}}'
    hook = {"Elements-Webhook-Id": "hook-123"}

    assert post(client, "events", body_a, headers=hook).status_code == 202
    assert post(client, "events", body_b, headers=hook).status_code == 200
    assert (
        post(client, "events", body_b, headers={"Elements-Webhook-Id": "hook-4"}).status_code == 202
    )


def test_events_without_any_id_are_deduplicated_by_body_hash(client) -> None:
    body_a = b'{"message": {"events": [{"objectId": "a"}]}}'
    body_b = b'{"message": {"events": [{"objectId": "b"}]}}'

    assert post(client, "events", body_a).status_code == 202
    assert post(client, "events", body_a).status_code == 200
    assert post(client, "events", body_b).status_code == 202


def test_numeric_looking_key_stays_a_string(config) -> None:
    config["BULKHOOK_SIGNATURE_KEY"] = "0012345678901234567890"
    client = create_app(config).test_client()

    assert post(client, "bulk", BULK_BODY, key="0012345678901234567890").status_code == 202
    assert post(client, "events", EVENTS_BODY, key="12345678901234567890").status_code == 401


def test_unsigned_callbacks_are_accepted_only_when_allowed(config, conn) -> None:
    del config["BULKHOOK_SIGNATURE_KEY"]
    config["BULKHOOK_ALLOW_UNSIGNED"] = "true"
    client = create_app(config).test_client()

    response = post(client, "bulk", BULK_BODY, key=None)
    assert response.status_code == 202
    assert conn.hget(record_key(response.get_json()["delivery_id"]), "signed") == b"0"
    # A signature that is present is still checked, and with no key it cannot pass.
    assert post(client, "events", EVENTS_BODY, key=KEY).status_code == 401


def test_unsigned_allowed_with_a_key_still_verifies_signed_ones(config) -> None:
    config["BULKHOOK_ALLOW_UNSIGNED"] = "true"
    client = create_app(config).test_client()

    assert post(client, "bulk", BULK_BODY, key=None).status_code == 202
    assert post(client, "events", EVENTS_BODY, key="wrong").status_code == 401
    assert post(client, "events", EVENTS_BODY, key=KEY).status_code == 202


def test_wrong_method_gets_405_with_allow(client) -> None:
    response = client.get("/callbacks/bulk")

    assert response.status_code == 405
    assert response.get_json()["status"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("path", ["/callbacks/other", "/callbacks", "/", "/callbacks/bulk/x"])
def test_unknown_path_gets_404_in_json(client, path) -> None:
    response = client.post(path, data=BULK_BODY)

    assert response.status_code == 404
    assert response.get_json()["status"] == "not_found"


def test_healthz_and_readyz_answer_when_redis_is_up(client) -> None:
    assert client.get("/healthz").get_json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "ready"


def test_keys_never_reach_the_logs_or_answers(config, caplog) -> None:
    config["BULKHOOK_SIGNATURE_KEY"] = "current-secret-9f2c"
    config["BULKHOOK_SIGNATURE_KEY_PREVIOUS"] = "previous-secret-71aa"
    caplog.set_level(logging.DEBUG)
    app = create_app(config)
    client = app.test_client()

    answers = [
        post(client, "bulk", BULK_BODY, key="current-secret-9f2c"),
        post(client, "bulk", BULK_BODY, key="current-secret-9f2c"),
        post(client, "bulk", BULK_BODY, key="wrong"),
        post(client, "bulk", b"nope", key="previous-secret-71aa"),
    ]

    assert [a.status_code for a in answers] == [202, 200, 401, 400]
    visible = caplog.text + "".join(a.get_data(as_text=True) for a in answers)
    visible += repr(app.extensions["bulkhook"])
    assert "bulk callback refused (signature)" in caplog.text  # the logs were captured at all
    assert "current-secret-9f2c" not in visible
    assert "previous-secret-71aa" not in visible


def test_body_one_byte_over_the_limit_gets_413(config, conn) -> None:
    config["BULKHOOK_MAX_BODY_BYTES"] = "1024"
    body = json.dumps({"id": "1", "status": "COMPLETED", "pad": ""}).encode()
    body = body.replace(b'""', b'"' + b"x" * (1025 - len(body)) + b'"')
    assert len(body) == 1025

    response = post(create_app(config).test_client(), "bulk", body)

    assert response.status_code == 413
    assert_nothing_recorded(conn)


def test_intake_queues_one_drain_task_as_rqs_own_enqueue_would(client, conn) -> None:
    from rq.job import Job

    from service.connection import task_queue

    first = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    second = post(client, "events", EVENTS_BODY).get_json()["delivery_id"]

    queue = task_queue(conn)
    # One drain task for both: the second found one waiting (drain.FLAG_KEY).
    assert queue.get_job_ids() == [f"drain-{first}"]
    assert queued_ids(conn) == [first, second]
    job = Job.fetch(f"drain-{first}", connection=conn, serializer=queue.serializer)
    assert job.func_name == "service.tasks.drain"
    assert job.args == []
    assert job.origin == "bulkhook"
    assert job.get_status() == "queued"
    assert job.timeout == 600
    assert job.enqueued_at is not None
    assert conn.sismember("rq:queues", queue.key)
