"""The sweeper queues again deliveries whose task RQ lost, and leaves alone those it holds."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from service import drain
from service.config import Settings
from service.connection import task_queue
from service.delivery import PENDING_KEY, record_key
from service.intake import TASK, task_options
from service.sweeper import sweep

from .conftest import BULK_BODY, post, work


@pytest.fixture
def settings(config) -> Settings:
    return Settings.from_env({**config, "BULKHOOK_SWEEP_AFTER_SECONDS": "1"})


def accepted(client, conn) -> str:
    delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    assert conn.zscore(PENDING_KEY, delivery_id) is not None
    time.sleep(1.2)  # older than BULKHOOK_SWEEP_AFTER_SECONDS
    return delivery_id


def as_task(client, conn, settings) -> str:
    """An accepted delivery that became an RQ task of its own (a drain's attempt failed)."""
    delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    queue = task_queue(conn)
    # The drain task ran, took the delivery, and handed it to RQ.
    queue.remove(drain.task_id(delivery_id))
    conn.delete(drain.FLAG_KEY)
    assert [taken[0] for taken in drain.take(conn, "drain-gone", 10)] == [delivery_id]
    fields = {"id": delivery_id, "kind": "bulk", "job_id": "42114492"}
    queue.enqueue_call(TASK, **task_options(settings, fields))
    time.sleep(1.2)  # older than BULKHOOK_SWEEP_AFTER_SECONDS
    return delivery_id


# --- deliveries a drain has, or had ----------------------------------------------------------


def test_delivery_waiting_for_a_drain_is_left_alone(client, conn, settings) -> None:
    delivery_id = accepted(client, conn)

    assert sweep(conn, settings) == []
    assert conn.lrange(drain.READY_KEY, 0, -1) == [delivery_id.encode()]


def test_delivery_taken_by_a_drain_that_died_is_queued_again_and_processed(
    client, conn, settings
) -> None:
    delivery_id = accepted(client, conn)
    drain.take(conn, "drain-killed", 10)
    conn.hset(record_key(delivery_id), "taken_at", time.time() - 30)  # long before the cutoff

    assert sweep(conn, settings) == [delivery_id]

    work(conn)
    assert conn.hget(record_key(delivery_id), "state") == b"done"


def test_delivery_taken_by_a_drain_rq_will_run_again_is_left_alone(client, conn, settings):
    delivery_id = accepted(client, conn)
    # The drain's work horse died; RQ queued the drain again, which takes it again first.
    task_queue(conn).enqueue_call(drain.TASK, job_id="drain-retried")
    drain.take(conn, "drain-retried", 10)
    conn.hset(record_key(delivery_id), "taken_at", time.time() - 30)

    assert sweep(conn, settings) == []


def test_delivery_taken_by_a_drain_rq_says_is_queued_but_is_in_no_queue_is_queued_again(
    client, conn, settings
) -> None:
    delivery_id = accepted(client, conn)
    queue = task_queue(conn)
    queue.enqueue_call(drain.TASK, job_id="drain-stranded")
    conn.lrem(queue.key, 0, "drain-stranded")  # one of RQ's stranding cases
    drain.take(conn, "drain-stranded", 10)
    conn.hset(record_key(delivery_id), "taken_at", time.time() - 30)
    time.sleep(1.2)  # the drain task, too, older than BULKHOOK_SWEEP_AFTER_SECONDS

    assert sweep(conn, settings) == [delivery_id]


def test_delivery_just_taken_by_a_drain_is_left_alone(client, conn, settings) -> None:
    delivery_id = accepted(client, conn)
    # Taken after the sweeper read the running drains: too recent to call lost.
    drain.take(conn, "drain-just-started", 10)

    assert sweep(conn, settings) == []
    assert conn.hget(record_key(delivery_id), "state") == b"processing"


def test_a_drain_is_queued_when_deliveries_wait_and_rq_lost_the_drain_task(
    client, conn, settings
) -> None:
    delivery_id = accepted(client, conn)
    queue = task_queue(conn)
    conn.lrem(queue.key, 1, drain.task_id(delivery_id))  # RQ stranded the drain task...
    conn.delete(drain.FLAG_KEY)  # ... and its flag expired

    assert sweep(conn, settings) == []
    assert len(queue.get_job_ids()) == 1  # a new drain task

    work(conn)
    assert conn.hget(record_key(delivery_id), "state") == b"done"


# --- deliveries that became RQ tasks of their own: RQ's corner cases -------------------------


def test_task_taken_off_the_queue_and_lost_is_queued_again_and_processed(
    client, conn, settings
) -> None:
    delivery_id = as_task(client, conn, settings)
    queue = task_queue(conn)
    conn.lrem(queue.key, 1, delivery_id)  # as if a worker took it and died before starting it

    assert sweep(conn, settings) == [delivery_id]

    work(conn)
    assert conn.hget(record_key(delivery_id), "state") == b"done"
    assert conn.zscore(PENDING_KEY, delivery_id) is None


def test_task_rq_drops_from_its_started_registry_is_queued_again(client, conn, settings) -> None:
    delivery_id = as_task(client, conn, settings)
    queue = task_queue(conn)
    # RQ's own corner case: in the started registry (expired), status still "queued", off the
    # queue. RQ's clean-up removes such an entry without requeueing the task.
    conn.lrem(queue.key, 1, delivery_id)
    registry = StartedJobRegistry(queue=queue)
    conn.zadd(registry.key, {f"{delivery_id}:execution-1": time.time() - 5})
    assert Job.fetch(delivery_id, connection=conn, serializer=queue.serializer).get_status() == (
        JobStatus.QUEUED
    )

    assert sweep(conn, settings) == [delivery_id]
    assert conn.zcard(registry.key) == 0
    assert queue.get_job_ids() == [delivery_id]


def test_task_still_in_the_queue_is_left_alone(client, conn, settings) -> None:
    delivery_id = as_task(client, conn, settings)

    assert sweep(conn, settings) == []
    assert task_queue(conn).get_job_ids() == [delivery_id]


def test_dead_lettered_task_is_left_for_a_person(client, conn, settings, monkeypatch) -> None:
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.always_fails")
    delivery_id = accepted(client, conn)
    work(conn)
    time.sleep(1.2)

    assert sweep(conn, settings) == []
    assert conn.hget(record_key(delivery_id), "state") == b"failed"


def test_done_deliveries_leave_the_pending_set(client, conn, settings) -> None:
    delivery_id = accepted(client, conn)
    work(conn)

    assert conn.zscore(PENDING_KEY, delivery_id) is None
    assert sweep(conn, settings) == []


def test_task_stranded_in_the_intermediate_list_is_queued_again_once(client, conn, settings):
    delivery_id = as_task(client, conn, settings)
    queue = task_queue(conn)
    # A worker took it (BLMOVE into the intermediate list) and was killed at once.
    conn.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")

    assert sweep(conn, settings) == [delivery_id]
    assert conn.llen(queue.intermediate_queue_key) == 0
    assert queue.get_job_ids() == [delivery_id]


def test_retry_long_overdue_without_a_scheduler_is_queued_again(client, conn, settings):
    delivery_id = as_task(client, conn, settings)
    queue = task_queue(conn)
    job = Job.fetch(delivery_id, connection=conn, serializer=queue.serializer)
    conn.lrem(queue.key, 1, delivery_id)
    queue.scheduled_job_registry.schedule(job, datetime.now(UTC) - timedelta(seconds=30))
    job.set_status(JobStatus.SCHEDULED)

    assert sweep(conn, settings) == [delivery_id]
    assert queue.scheduled_job_registry.get_job_ids() == []
    assert queue.get_job_ids() == [delivery_id]


def test_retry_not_yet_due_is_left_to_the_scheduler(client, conn, settings):
    delivery_id = as_task(client, conn, settings)
    queue = task_queue(conn)
    job = Job.fetch(delivery_id, connection=conn, serializer=queue.serializer)
    conn.lrem(queue.key, 1, delivery_id)
    queue.scheduled_job_registry.schedule(job, datetime.now(UTC) + timedelta(seconds=60))
    job.set_status(JobStatus.SCHEDULED)

    assert sweep(conn, settings) == []
