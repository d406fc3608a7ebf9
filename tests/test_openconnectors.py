"""The API client against the simulator, both real HTTP; and status parsing of both versions."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.openconnectors import ApiError, Client, JobStatus
from service.upload import prepared

from .processes import REPO, SimulatorProcess, wait_for

KEY = "client-test-key"


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    running = SimulatorProcess(tmp_path_factory.mktemp("simulator"), KEY)
    yield running
    running.close()


@pytest.fixture
def client(simulator: SimulatorProcess) -> Client:
    simulator.switch(step_seconds=0.05)
    return Client(simulator.url, simulator.TOKEN, simulator.SECRET, backoff=0.01)


def finished(client: Client, job_id: str) -> JobStatus:
    return wait_for(lambda: (s := client.status(job_id)).terminal and s, what="job to finish")


def upload_rows(client: Client, tmp_path: Path, rows: list[dict], into: str = "contacts") -> str:
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with prepared(source, "json") as (path, _):
        return str(client.upload(into, path, file_format="json", callback_url=None)["id"])


def test_wrong_credentials_name_the_call_and_the_fix(simulator) -> None:
    client = Client(simulator.url, simulator.TOKEN, "wrong-secret", backoff=0.01)
    with pytest.raises(ApiError) as caught:
        client.objects()
    assert caught.value.status == 401
    assert str(caught.value).startswith("list objects failed (HTTP 401)")
    assert "check BULKHOOK_ELEMENT_TOKEN and BULKHOOK_USER_SECRET" in str(caught.value)


def test_objects(client) -> None:
    assert {"accounts", "contacts"} <= set(client.objects())


def test_seed_contacts_upload_counts_records_and_errors(client, tmp_path) -> None:
    with prepared(REPO / "examples" / "contacts.tsv", "csv") as (path, count):
        job = client.upload("contacts", path, file_format="csv", callback_url=None)
    assert count == 10
    assert job["status"] == "CREATED"

    status = finished(client, str(job["id"]))

    assert (status.status, status.records_count, status.errors_count) == ("COMPLETED", 10, 1)
    assert status.direction is None  # v2 status documents do not say


def test_errors_are_read_across_every_page(client, tmp_path) -> None:
    rows = [{"email": f"bad-{i}", "name": str(i)} for i in range(7)] + [{"email": "ok@x.io"}]
    job_id = upload_rows(client, tmp_path, rows)
    finished(client, job_id)

    errors = list(client.errors(job_id, page_size=3))

    assert [e["record"]["name"] for e in errors] == [str(i) for i in range(7)]
    assert errors[0]["error"] == "email: invalid e-mail address 'bad-0'"


def test_v3_download_status_and_results(client, tmp_path) -> None:
    rows = [{"email": f"u{i}@x.io"} for i in range(3)]
    finished(client, upload_rows(client, tmp_path, rows, into="leads"))
    job = client.download("leads", file_format="jsonl", limit=2)

    status = finished(client, str(job["id"]))
    buffer = io.BytesIO()
    written = client.results(status.job_id, "leads", "jsonl", buffer)

    assert (status.direction, status.file_format, status.records_count) == ("DOWNLOAD", "jsonl", 2)
    assert written == len(buffer.getvalue())
    assert [json.loads(line)["email"] for line in buffer.getvalue().splitlines()] == [
        "u0@x.io",
        "u1@x.io",
    ]


def test_results_with_an_accept_the_job_does_not_match_are_a_clear_error(client) -> None:
    status = finished(client, str(client.download("contacts", file_format="csv")["id"]))
    with pytest.raises(ApiError, match=r"results of job \d+ failed \(HTTP 400\).*Accept"):
        client.results(status.job_id, "contacts", "json", io.BytesIO())


def test_unknown_job_is_a_404_that_names_the_call(client) -> None:
    with pytest.raises(ApiError, match=r"status of job 1 failed \(HTTP 404\).*no such job"):
        client.status("1")


def test_server_errors_are_retried_then_succeed(client, simulator) -> None:
    job_id = str(client.download("contacts")["id"])
    simulator.switch(step_seconds=0.05, fail_status=2)

    assert client.status(job_id).job_id == job_id


def test_server_errors_that_persist_become_an_api_error(client, simulator) -> None:
    job_id = str(client.download("contacts")["id"])
    simulator.switch(step_seconds=0.05, fail_status=100)

    with pytest.raises(ApiError, match=r"status of job \d+ failed \(HTTP 500\)"):
        client.status(job_id)
    seen = simulator.requests_seen()["simulator.status"]
    assert seen >= client.retries + 1


def test_unreachable_api_is_an_api_error_without_a_status() -> None:
    client = Client("http://127.0.0.1:1/elements/api-v2", "t", "s", retries=1, backoff=0.01)
    with pytest.raises(ApiError) as caught:
        client.jobs()
    assert caught.value.status is None
    assert "cannot reach" in str(caught.value)


def test_cancel_moves_a_job_to_cancelled(client, simulator) -> None:
    simulator.switch(step_seconds=30)
    job_id = str(client.download("contacts")["id"])

    client.cancel(job_id)

    assert finished(client, job_id).status == "CANCELLED"


def test_jobs_lists_the_accounts_jobs(client) -> None:
    job_id = str(client.download("contacts")["id"])
    listed = client.jobs()
    assert listed[0]["id"] == job_id
    assert listed[0]["job_direction"] == "DOWNLOAD"


def test_configure_instance_sets_callback_url_and_key(client) -> None:
    answer = client.configure_instance("1", "https://hooks.example/callbacks/events", "new-key")
    assert answer["configuration"]["event.notification.callback.url"] == (
        "https://hooks.example/callbacks/events"
    )
    assert "event.notification.signature.key" not in answer["configuration"]  # never echoed


def test_rate_limit_spaces_out_calls(simulator) -> None:
    from service.ratelimit import RateLimiter

    client = Client(simulator.url, simulator.TOKEN, simulator.SECRET, limiter=RateLimiter(2))
    started = time.monotonic()
    for _ in range(5):
        client.objects()
    # Five calls at two per second span at least two window changes.
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"id": "1", "status": "COMPLETE", "recordsCount": 10, "recordsFailedCount": 1},
            ("COMPLETED", 10, 1, None, None),
        ),
        (
            {
                "id": 1.0,
                "jobStatus": "CANCELED",
                "recordCount": "5",
                "errorCount": 0,
                "jobDirection": "download",
                "fileFormat": "JSONL",
            },
            ("CANCELLED", 5, 0, "DOWNLOAD", "jsonl"),
        ),
        (
            {
                "id": "3",
                "job_status": "RUNNING",
                "record_count": 2,
                "job_direction": "UPLOAD",
                "fileFormat": "txt/csv",
            },
            ("RUNNING", 2, None, "UPLOAD", "csv"),
        ),
    ],
)
def test_status_documents_of_both_versions_are_read(doc, expected) -> None:
    status = JobStatus.parse("x", doc)
    assert (
        status.status,
        status.records_count,
        status.errors_count,
        status.direction,
        status.file_format,
    ) == expected
