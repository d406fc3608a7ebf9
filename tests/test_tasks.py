"""Follow-up tasks run by real RQ workers against the real Redis."""

from __future__ import annotations

import json
from pathlib import Path

from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from service.config import QUEUE_NAME
from service.delivery import record_key, seen_key

from .conftest import BULK_BODY, EVENTS_BODY, post, work
from .handlers import read


def test_worker_runs_the_handlers_with_the_delivery(client, conn, handler_output, monkeypatch):
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record,log")
    delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]

    work(conn)

    [line] = read(handler_output)
    assert line["id"] == delivery_id
    assert line["kind"] == "bulk"
    assert line["job_id"] == "42114492"
    assert line["status"] == "COMPLETED"
    assert line["signed"] is True
    assert line["body"]["fileFormat"] == "csv"
    record = conn.hgetall(record_key(delivery_id))
    assert record[b"state"] == b"done"
    assert record[b"attempts"] == b"1"
    assert (
        record[b"outcome"] == b"tests.handlers.record: recorded; log: bulk job 42114492 COMPLETED"
    )
    assert b"body" not in record  # kept only until processed
    assert conn.ttl(record_key(delivery_id)) > 0


def test_event_notifications_reach_the_handlers(client, conn, handler_output, monkeypatch):
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record")
    post(client, "events", EVENTS_BODY, headers={"Elements-Webhook-Id": "wh-9"})

    work(conn)

    [line] = read(handler_output)
    assert line["kind"] == "events"
    assert line["event_id"] == "ev-1"
    assert line["webhook_id"] == "wh-9"
    assert line["body"]["message"]["events"][0]["eventType"] == "UPDATED"


def test_default_handler_logs_and_records_the_outcome(client, conn, caplog):
    caplog.set_level("INFO")
    delivery_id = post(client, "events", EVENTS_BODY).get_json()["delivery_id"]

    work(conn)

    outcome = "log: event notification with 1 event(s)"
    assert conn.hget(record_key(delivery_id), "outcome").decode() == outcome
    # One line for the delivery, the worker's, with the handler's summary; not a second.
    [line] = [r.getMessage() for r in caplog.records if "event notification" in r.getMessage()]
    assert line == f"delivery {delivery_id} processed (attempt 1): {outcome}"


def test_failing_handler_is_retried_alone(client, conn, handler_output, monkeypatch):
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record,tests.handlers.flaky")
    delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]

    work(conn)

    lines = read(handler_output)
    assert [line["handler"] for line in lines] == ["record", "flaky"]
    record = conn.hgetall(record_key(delivery_id))
    assert record[b"state"] == b"done"
    assert record[b"attempts"] == b"2"
    assert record[b"handlers_done"] == b"tests.handlers.record,tests.handlers.flaky"


def test_task_that_keeps_failing_lands_in_the_failed_registry(client, conn, monkeypatch):
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.always_fails")
    delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]

    work(conn)

    queue = Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)
    assert FailedJobRegistry(queue=queue).get_job_ids() == [delivery_id]
    record = conn.hgetall(record_key(delivery_id))
    assert record[b"state"] == b"failed"
    assert record[b"attempts"] == b"3"  # the first run and two retries (BULKHOOK_RETRY_INTERVALS)
    assert record[b"last_error"] == (
        f"tests.handlers.always_fails: ValueError: cannot handle {delivery_id}".encode()
    )
    assert record[b"body"] == BULK_BODY  # still there to requeue


def test_duplicate_is_processed_once(client, conn, handler_output, monkeypatch):
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record")
    post(client, "bulk", BULK_BODY)
    work(conn)
    assert post(client, "bulk", BULK_BODY).status_code == 200

    work(conn)

    assert len(read(handler_output)) == 1


def test_both_worker_classes_process_deliveries(
    client, conn, redis_url, handler_output, monkeypatch
):
    from rq import SimpleWorker, Worker

    from service import worker
    from service.config import Settings

    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record")
    # SimpleWorker is not a Worker subclass: isinstance tells the two apart.
    for name, expected in (("simple", SimpleWorker), ("fork", Worker)):
        body = json.dumps({"id": f"class-{name}", "status": "COMPLETED"}).encode()
        delivery_id = post(client, "bulk", body).get_json()["delivery_id"]
        settings = Settings.from_env({"REDIS_URL": redis_url, "BULKHOOK_WORKER_CLASS": name,
                                      "BULKHOOK_HANDLERS": "tests.handlers.record",
                                      "BULKHOOK_WORKER_MONITOR_SECONDS": "7",
                                      "BULKHOOK_WORKER_MAINTENANCE_SECONDS": "9"})  # fmt: skip
        built = worker.build(settings)
        assert isinstance(built, expected)
        assert (built.job_monitoring_interval, built.maintenance_interval) == (7, 9)
        assert built.dequeue_timeout == 9  # an idle worker wakes for its maintenance
        built.work(burst=True)
        assert conn.hget(record_key(delivery_id), "state") == b"done"
    assert [line["job_id"] for line in read(handler_output)] == ["class-simple", "class-fork"]


def test_idempotency_key_is_the_same_for_every_copy_of_one_callback(
    client, conn, handler_output, monkeypatch
) -> None:
    """A callback delivered again after its first record is gone keeps its key."""
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.effect_once")
    first = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    work(conn)
    # As if the first record had been lost with a primary that never replicated it.
    conn.delete(seen_key(conn.hget(record_key(first), "dedup_key").decode()))
    second = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    work(conn)

    keys = [json.loads(line)["key"] for line in handler_output.read_text().splitlines()]
    assert first != second
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(list(Path(f"{handler_output}.effects").iterdir())) == 1


def _post_jobs(client, count: int) -> list[str]:
    return [
        post(
            client, "bulk", json.dumps({"id": f"job-{n}", "status": "COMPLETED"}).encode()
        ).get_json()["delivery_id"]
        for n in range(count)
    ]


def test_one_drain_task_processes_every_waiting_delivery(client, conn, handler_output, monkeypatch):
    from service.drain import READY_KEY

    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record")
    ids = _post_jobs(client, 5)
    queue = Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)
    assert queue.get_job_ids() == [f"drain-{ids[0]}"]

    work(conn)

    assert [line["id"] for line in read(handler_output)] == ids  # in the order received
    assert all(conn.hget(record_key(i), "state") == b"done" for i in ids)
    assert conn.llen(READY_KEY) == 0
    assert queue.fetch_job(f"drain-{ids[0]}").return_value() == "5 done, 0 handed to RQ"


def test_a_drain_out_of_time_hands_over_to_a_new_drain_task(
    client, conn, handler_output, monkeypatch
):
    from service import drain

    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record")
    monkeypatch.setattr(drain, "BATCH", 1)
    monkeypatch.setattr(drain, "BUDGET_SECONDS", 0.0)  # out of time after each batch
    ids = _post_jobs(client, 3)

    work(conn)

    assert [line["id"] for line in read(handler_output)] == ids
    drains = FinishedJobRegistry(QUEUE_NAME, connection=conn).get_job_ids()
    assert len(drains) == 3 and all(d.startswith("drain-") for d in drains)


def test_a_delivery_failing_in_a_drain_does_not_hold_up_the_others(
    client, conn, handler_output, monkeypatch
):
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.record,tests.handlers.flaky")
    first = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    second = post(client, "events", EVENTS_BODY).get_json()["delivery_id"]

    work(conn)

    handled = [(line["handler"], line["id"]) for line in read(handler_output)]
    # Both failed once in the drain (flaky writes only when it succeeds), each became an RQ
    # task, and each succeeded there without running `record` again.
    assert handled == [("record", first), ("record", second),
                       ("flaky", first), ("flaky", second)]  # fmt: skip
    for delivery_id in (first, second):
        assert conn.hget(record_key(delivery_id), "state") == b"done"
        assert conn.hget(record_key(delivery_id), "attempts") == b"2"


def test_a_drain_writes_successes_together(client, conn, handler_output, monkeypatch):
    from service import successes

    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.states")
    monkeypatch.setattr(successes, "FLUSH_SECONDS", 60.0)  # every handler is quick, then
    ids = _post_jobs(client, 4)

    work(conn)

    seen = [line["states"] for line in read(handler_output)]
    # While the last ran, the others' successes were still waiting to be written with it.
    assert seen[-1] == {i: "processing" for i in ids}
    for delivery_id in ids:
        record = conn.hgetall(record_key(delivery_id))
        assert record[b"state"] == b"done" and record[b"outcome"] == b"tests.handlers.states: seen"
        assert b"body" not in record and b"preview" in record
        assert conn.ttl(record_key(delivery_id)) > 0
    assert conn.zcard("bulkhook:pending") == 0
    assert conn.hget("bulkhook:metrics:tasks", "succeeded") == b"4"


def test_a_slow_handler_has_its_success_written_at_once(client, conn, handler_output, monkeypatch):
    from service import successes

    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.states")
    monkeypatch.setenv("BULKHOOK_TEST_HANDLER_SECONDS", str(successes.FLUSH_SECONDS * 2))
    ids = _post_jobs(client, 3)

    work(conn)

    seen = [line["states"] for line in read(handler_output)]
    # Each ran with every earlier success written: a worker killed now would not run the
    # earlier deliveries' handlers again.
    # (The drain took all three at once: each is processing until its success is written.)
    assert seen == [
        {ids[0]: "processing", ids[1]: "processing", ids[2]: "processing"},
        {ids[0]: "done", ids[1]: "processing", ids[2]: "processing"},
        {ids[0]: "done", ids[1]: "done", ids[2]: "processing"},
    ]


def test_a_result_that_is_not_valid_text_does_not_fail_the_shared_write(
    client, conn, handler_output, monkeypatch
):
    from service import successes

    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.lone_surrogate,tests.handlers.record")
    monkeypatch.setattr(successes, "FLUSH_SECONDS", 60.0)  # both in one write
    ids = _post_jobs(client, 2)

    work(conn)

    for delivery_id in ids:
        record = conn.hgetall(record_key(delivery_id))
        assert record[b"state"] == b"done"
        assert record[b"outcome"].startswith(b"tests.handlers.lone_surrogate: odd ? text")
        assert record[b"attempts"] == b"1"
