"""Operations: /metrics (in-process and under gunicorn with several processes) and JSON logs."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service import logs
from service.signature import sign

from .conftest import BULK_BODY, EVENTS_BODY, KEY, post, work
from .processes import Stack, json_lines, wait_for


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def callbacks(samples: dict, kind: str, answer: str) -> float:
    return value(samples, "bulkhook_callbacks_total", kind=kind, answer=answer)


# --- metrics, in one process ---------------------------------------------------------------


def test_metrics_count_each_answer_by_kind(client) -> None:
    before = scrape(client.get("/metrics").get_data(as_text=True))
    body = b'{"id": "metrics-1", "status": "COMPLETED"}'

    post(client, "bulk", body)
    post(client, "bulk", body)
    post(client, "bulk", body, key="wrong")
    post(client, "bulk", b"[1, 2]")
    post(client, "events", EVENTS_BODY)
    page = client.get("/metrics")
    after = scrape(page.get_data(as_text=True))

    assert page.status_code == 200
    assert page.content_type.startswith("text/plain; version=")  # Prometheus text format
    delta = {
        answer: callbacks(after, kind, answer) - callbacks(before, kind, answer)
        for kind, answer in [
            ("bulk", "accepted"),
            ("bulk", "duplicate"),
            ("bulk", "signature"),
            ("bulk", "malformed"),
            ("events", "accepted"),
            ("bulk", "too_large"),
        ]  # fmt: skip
    }
    assert delta == {"accepted": 1, "duplicate": 1, "signature": 1, "malformed": 1,
                     "too_large": 0}  # fmt: skip
    assert callbacks(after, "events", "accepted") - callbacks(before, "events", "accepted") == 1
    count = value(after, "bulkhook_callback_duration_seconds_count", kind="bulk")
    assert count - value(before, "bulkhook_callback_duration_seconds_count", kind="bulk") == 4


def test_oversized_and_unavailable_answers_are_counted(config, redis_server) -> None:
    from service import create_app

    config["BULKHOOK_MAX_BODY_BYTES"] = "100"
    client = create_app(config).test_client()
    before = scrape(client.get("/metrics").get_data(as_text=True))

    assert post(client, "bulk", b" " * 200).status_code == 413
    after = scrape(client.get("/metrics").get_data(as_text=True))

    assert callbacks(after, "bulk", "too_large") - callbacks(before, "bulk", "too_large") == 1


def test_worker_figures_come_from_redis(client, conn) -> None:
    post(client, "bulk", b'{"id": "metrics-2", "status": "COMPLETED"}')
    waiting = scrape(client.get("/metrics").get_data(as_text=True))

    work(conn)
    done = scrape(client.get("/metrics").get_data(as_text=True))

    assert value(waiting, "bulkhook_redis_up") == 1
    assert value(waiting, "bulkhook_queue_tasks", state="ready") == 1  # the delivery
    assert value(waiting, "bulkhook_queue_tasks", state="queued") == 1  # the drain task
    assert value(waiting, "bulkhook_pending_deliveries") == 1
    assert value(waiting, "bulkhook_oldest_pending_age_seconds") > 0
    assert value(done, "bulkhook_queue_tasks", state="queued") == 0
    assert value(done, "bulkhook_queue_tasks", state="ready") == 0
    assert value(done, "bulkhook_pending_deliveries") == 0
    assert value(done, "bulkhook_oldest_pending_age_seconds") == 0
    succeeded = value(done, "bulkhook_tasks_total", outcome="succeeded")
    assert succeeded - value(waiting, "bulkhook_tasks_total", outcome="succeeded") == 1


def test_failed_tasks_are_counted_as_retried_then_dead_lettered(config, conn, monkeypatch):
    from service import create_app

    monkeypatch.setenv("BULKHOOK_HANDLERS", "tests.handlers.always_fails")  # the worker's
    config["BULKHOOK_RETRY_INTERVALS"] = "0"  # one retry, at once
    monkeypatch.setenv("BULKHOOK_RETRY_INTERVALS", "0")  # the worker's
    client = create_app(config).test_client()
    post(client, "bulk", BULK_BODY)

    work(conn)
    samples = scrape(client.get("/metrics").get_data(as_text=True))

    assert value(samples, "bulkhook_tasks_total", outcome="retried") == 1
    assert value(samples, "bulkhook_tasks_total", outcome="dead_lettered") == 1
    assert value(samples, "bulkhook_queue_tasks", state="dead_letter") == 1


# --- logs ------------------------------------------------------------------------------------


def record(message: str, *args, name: str = "service.receiver", **extra) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    for field, content in extra.items():
        setattr(made, field, content)
    return made


def test_json_lines_carry_the_ids_as_fields() -> None:
    line = logs.JsonFormatter().format(
        record(
            "bulk callback %s",
            "accepted",
            delivery_id="d1",
            job_id="j1",
            answer="accepted",
            kind="bulk",
            duration_ms=1.5,
        )  # fmt: skip
    )

    parsed = json.loads(line)
    assert parsed["message"] == "bulk callback accepted"
    assert parsed["level"] == "INFO" and parsed["logger"] == "service.receiver"
    assert {k: parsed[k] for k in ("delivery_id", "job_id", "answer", "kind", "duration_ms")} == {
        "delivery_id": "d1", "job_id": "j1", "answer": "accepted", "kind": "bulk",
        "duration_ms": 1.5,
    }  # fmt: skip
    assert "T" in parsed["time"] and isinstance(parsed["pid"], int)


def access_record(method: str, path: str, status: int) -> logging.LogRecord:
    """An access line as uvicorn's worker logs it."""
    return record('%s - "%s %s HTTP/%s" %d', "10.0.0.9:51234", method, path, "1.1", status,
                  name="uvicorn.access")  # fmt: skip


def test_access_lines_become_fields_without_the_query_string() -> None:
    made = access_record("GET", "/jobs/j-1?token=secret-token", 200)

    assert logs.AccessLines().filter(made)
    parsed = json.loads(logs.JsonFormatter().format(made))
    text = logging.Formatter(logs.TEXT_FORMAT).format(made)

    assert parsed["message"] == "access" and parsed["remote_addr"] == "10.0.0.9"
    assert parsed["method"] == "GET" and parsed["path"] == "/jobs/j-1"
    assert parsed["status"] == 200
    assert "secret-token" not in json.dumps(parsed) and "secret-token" not in text


@pytest.mark.parametrize(("setting", "expected"), [("text", "text"), ("JSON", "json"),
                                                   ("", "json"), ("xml", "json")])  # fmt: skip
def test_log_format_setting(setting: str, expected: str) -> None:
    assert logs.log_format({"BULKHOOK_LOG_FORMAT": setting}) == expected
    made = logs.formatter(expected).format(record("hello"))
    assert made.startswith("{") == (expected == "json")


# --- under gunicorn, several processes -------------------------------------------------------


def _accepting_pids(folder: Path) -> set[int]:
    """The web processes that have logged an accepted callback so far."""
    return {
        line["pid"] for line in json_lines(folder / "web.log") if line.get("answer") == "accepted"
    }


@pytest.mark.slow
def test_metrics_add_up_across_gunicorn_processes_and_logs_follow_a_delivery(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path, KEY, WEB_CONCURRENCY="3",
                  BULKHOOK_HANDLERS="tests.handlers.record")  # fmt: skip
    try:

        def send(n: int) -> str:
            body = json.dumps({"id": f"multi-{n}", "status": "COMPLETED"}).encode()
            # A new connection each time, so the processes' accepts spread them.
            answer = requests.post(f"{stack.base}/callbacks/bulk", data=body,
                                   headers={"Elements-Webhook-Signature": sign(KEY, body),
                                            "Connection": "close"}, timeout=10)  # fmt: skip
            assert answer.status_code == 202
            return str(answer.json()["delivery_id"])

        # Until two processes have taken some: the kernel hands each connection to whichever
        # process accepts first, and nothing makes them take turns (a clean-clone CI run saw
        # one process take 60 of 60, and so did 2 runs in 5 here with 8 at a time).
        ids: list[str] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(ids) < 60 or (len(_accepting_pids(tmp_path)) < 2 and len(ids) < 1200):
                ids += pool.map(send, range(len(ids), len(ids) + 60))
        count = len(ids)
        stack.post(b"not json")
        pages = [requests.get(f"{stack.base}/metrics", timeout=10).text for _ in range(6)]
        last = ids[-1]

        def worker_line() -> dict | None:
            lines = json_lines(tmp_path / "worker.log")
            return next((line for line in lines if line.get("delivery_id") == last), None)

        processed = wait_for(worker_line, 60, "the worker's line about the last delivery")
        web_lines = json_lines(tmp_path / "web.log")
    finally:
        stack.close()

    # Whichever process answered the scrape, it reports every process's callbacks.
    for page in pages:
        samples = scrape(page)
        assert callbacks(samples, "bulk", "accepted") == count
        assert callbacks(samples, "bulk", "malformed") == 1
    accepted = [line for line in web_lines if line.get("answer") == "accepted"]
    assert len({line["pid"] for line in accepted}) >= 2  # more than one process took them
    # One delivery, followed from the web's line to the worker's, by the same field.
    web_line = next(line for line in accepted if line["delivery_id"] == last)
    assert web_line["job_id"] == processed["job_id"] == f"multi-{count - 1}"
    assert web_line["source"] == "127.0.0.1" and web_line["status_code"] == 202
    assert processed["answer"] == "done" and "duration_ms" in processed
    # A callback has one line, the app's, with its ids; gunicorn's access lines are the rest.
    assert len(accepted) == count
    access = [line["path"] for line in web_lines if line.get("logger") == "uvicorn.access"]
    assert "/metrics" in access and "/callbacks/bulk" not in access
    everything = (tmp_path / "web.log").read_text() + (tmp_path / "worker.log").read_text()
    assert KEY not in everything
    assert "multi-59" in everything and '"status": "COMPLETED"' not in everything  # no bodies


def test_jobs_are_counted_by_state_and_status(client, conn) -> None:
    from service import jobs

    jobs.record_started(conn, "metrics-job-1", object_name="contacts", direction="upload",
                        callback=None, token=None)  # fmt: skip
    samples = scrape(client.get("/metrics").get_data(as_text=True))

    assert value(samples, "bulkhook_jobs", state=jobs.OPEN, status="CREATED") == 1
