"""The dead-letter area through `bulkhook failed`: list, show, requeue, purge."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from service.cli import main
from service.config import Settings
from service.connection import task_queue, task_retry
from service.deadletter import parse_age
from service.delivery import PENDING_KEY, idempotency_key, record_key

from .conftest import BULK_BODY, EVENTS_BODY, post, work


@pytest.fixture
def dead(client, conn, monkeypatch) -> list[str]:
    """Two deliveries whose handler keeps failing, retries used up."""
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.always_fails")
    ids = [post(client, "bulk", BULK_BODY).get_json()["delivery_id"],
           post(client, "events", EVENTS_BODY).get_json()["delivery_id"]]  # fmt: skip
    work(conn)
    return ids


def run(redis_url: str, *args: str):
    return CliRunner().invoke(main, ["failed", *args], env={"REDIS_URL": redis_url})


def test_list_shows_each_dead_task_with_its_error(dead, redis_url) -> None:
    result = run(redis_url, "list", "--json")

    entries = [json.loads(line) for line in result.output.splitlines()]
    assert sorted(e["id"] for e in entries) == sorted(dead)
    assert entries[0]["error"].startswith(
        "service.handlers.HandlerError: tests.handlers.always_fails"
    )


def test_show_gives_the_traceback_and_the_delivery(dead, redis_url) -> None:
    result = run(redis_url, "show", dead[0])

    assert result.exit_code == 0
    assert '"state": "failed"' in result.output
    assert f'"body_bytes": {len(BULK_BODY)}' in result.output
    assert "Traceback (most recent call last)" in result.output
    assert "ValueError: cannot handle" in result.output


def test_requeue_one_runs_it_again(dead, redis_url, conn, monkeypatch) -> None:
    monkeypatch.setenv("BULKHOOK_HANDLERS", "log")

    result = run(redis_url, "requeue", dead[0])

    assert result.output == f"requeued {dead[0]}\n"
    assert conn.hget(record_key(dead[0]), "state") == b"queued"
    work(conn)
    assert conn.hget(record_key(dead[0]), "state") == b"done"
    assert conn.zscore(PENDING_KEY, dead[0]) is None
    assert [
        e["id"] for e in map(json.loads, run(redis_url, "list", "--json").output.splitlines())
    ] == [dead[1]]


def test_requeue_all(dead, redis_url, conn) -> None:
    assert run(redis_url, "requeue", "--all").output == "requeued 2 task(s)\n"
    assert sorted(task_queue(conn).get_job_ids()) == sorted(dead)


def test_requeue_needs_an_id_or_all_and_a_known_id(dead, redis_url) -> None:
    assert run(redis_url, "requeue").exit_code == 2
    unknown = run(redis_url, "requeue", "nope")
    assert unknown.exit_code == 1
    assert "no failed task nope" in unknown.output


def test_purge_keeps_recent_failures_and_deletes_old_ones(dead, redis_url, conn) -> None:
    assert run(redis_url, "purge", "--older-than", "1h").output == "purged 0 task(s)\n"
    assert run(redis_url, "purge", "--older-than", "0s").output == "purged 2 task(s)\n"
    assert run(redis_url, "list").output == "no failed tasks\n"
    assert not conn.exists(record_key(dead[0]))


def test_purge_refuses_an_unreadable_age(redis_url) -> None:
    result = run(redis_url, "purge", "--older-than", "soon")
    assert result.exit_code == 2
    assert "is not an age such as 30m, 12h or 7d" in result.output


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200),
                                               ("7d", 604800), ("1w", 604800)])  # fmt: skip
def test_ages(text: str, seconds: int) -> None:
    assert parse_age(text).total_seconds() == seconds


def test_retry_intervals_are_jittered_within_a_fifth() -> None:
    settings = Settings.from_env({"BULKHOOK_RETRY_INTERVALS": "10,100,1000"})
    draws = [task_retry(settings) for _ in range(200)]

    assert {retry.max for retry in draws} == {3}
    for position, base in enumerate((10, 100, 1000)):
        values = {retry.intervals[position] for retry in draws}
        assert min(values) >= base * 0.8 - 0.5 and max(values) <= base * 1.2 + 0.5
        assert len(values) > 1  # jittered, not fixed


def test_handlers_see_the_same_idempotency_key_on_every_attempt(
    client, conn, handler_output, monkeypatch
) -> None:
    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.effect_once,tests.handlers.flaky")
    delivery_id = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]

    work(conn)

    keys = {json.loads(line).get("key") for line in handler_output.read_text().splitlines()}
    dedup_key = conn.hget(record_key(delivery_id), "dedup_key").decode()
    assert keys - {None} == {idempotency_key(dedup_key)}
