"""The whole loop against the simulator: bulkhook starts jobs, gets called back, processes once.

Real processes throughout: `bulkhook simulator`, gunicorn and `bulkhook worker` as the
Procfile runs them, the bulk CLI, one redis-server.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest

from service import jobs

from .handlers import read
from .processes import REPO, SimulatorProcess, Stack, wait_for

pytestmark = pytest.mark.slow

KEY = "pipeline-key"
CONTACTS = REPO / "examples" / "contacts.tsv"


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    # Not the stack's key: callbacks verify only once `bulkhook instance configure` gave the
    # instance bulkhook's key, which every test below then relies on.
    running = SimulatorProcess(tmp_path_factory.mktemp("simulator"), "simulator-default-key")
    yield running
    running.close()


@pytest.fixture(scope="module")
def stack(simulator: SimulatorProcess, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("pipeline")
    from service.embedded_redis import free_port

    port = free_port()
    running = Stack(
        tmp,
        KEY,
        PORT=str(port),
        BULKHOOK_PUBLIC_URL=f"http://127.0.0.1:{port}",
        BULKHOOK_HANDLERS="tests.handlers.record_outcome,tests.handlers.flaky_outcome,archive",
        BULKHOOK_RETRY_INTERVALS="1,1,1",
        BULKHOOK_STATUS_CHECK_INTERVALS="1,1,1,1,1",
        BULKHOOK_RECONCILE_AFTER_SECONDS="2",
        BULKHOOK_RECONCILE_INTERVAL_SECONDS="1",
        **{k: v for k, v in simulator.settings().items() if k != "BULKHOOK_SIGNATURE_KEY"},
    )
    configured = running.bulkhook("instance", "configure", "1")
    assert configured.returncode == 0, configured.stderr
    running.configure_output = configured.stdout
    yield running
    running.close()


@pytest.fixture(autouse=True)
def default_switches(simulator: SimulatorProcess) -> None:
    simulator.switch()


def start_upload(stack: Stack, *extra: str) -> str:
    result = stack.bulkhook("bulk", "upload", "contacts", str(CONTACTS), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def lines_for(stack: Stack, job_id: str, handler: str = "record_outcome") -> list[dict]:
    return [
        line
        for line in read(stack.output)
        if line.get("job_id") == job_id and line["handler"] == handler
    ]


def test_uploaded_seed_contacts_reach_the_handlers_and_the_archive(stack, simulator) -> None:
    job_id = start_upload(stack)

    record = stack.wait_job_done(job_id)

    assert record["status"] == "COMPLETED"
    assert record["started_by"] == "bulkhook"
    [outcome] = lines_for(stack, job_id)
    assert outcome["records_count"] == 10
    assert outcome["errors_count"] == 1
    assert outcome["errors"][0]["record"]["C_BusPhone"] == "444) 444-1234"
    assert outcome["callback"]["id"] == job_id
    archived = stack.tmp / "outbox" / job_id
    status = json.loads((archived / "status.json").read_text())
    assert (status["records_count"], status["errors_count"]) == (10, 1)
    assert len((archived / "errors.jsonl").read_text().splitlines()) == 1
    [callback] = simulator.callbacks(job_id)
    assert callback["answer"] == 202


def test_download_results_are_fetched_in_the_jobs_format(stack, simulator) -> None:
    stack.wait_job_done(start_upload(stack))  # the simulator now stores the contacts
    result = stack.bulkhook("bulk", "download", "contacts", "--format", "jsonl", "--limit", "5")
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["id"]

    stack.wait_job_done(job_id)

    [outcome] = lines_for(stack, job_id)
    assert outcome["direction"] == "DOWNLOAD"
    records = (stack.tmp / "outbox" / job_id / "records.jsonl").read_text().splitlines()
    assert len(records) == 5
    assert json.loads(records[0])["C_EmailAddress"] == "norm.smith@acme.com"


def test_query_job_results_come_as_csv(stack) -> None:
    result = stack.bulkhook("bulk", "query", "select * from contacts")
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["id"]

    stack.wait_job_done(job_id)

    header = (stack.tmp / "outbox" / job_id / "records.csv").read_text().splitlines()[0]
    assert header.startswith("C_EmailAddress,")


def test_dropped_callback_is_recovered_by_the_reconciler(stack, simulator) -> None:
    simulator.switch(drop_callbacks=1)
    job_id = start_upload(stack)

    stack.wait_job_done(job_id)

    assert [c["answer"] for c in simulator.callbacks(job_id)] == ["dropped"]
    assert len(lines_for(stack, job_id)) == 1
    inbox = stack.bulkhook("inbox", "--json").stdout.splitlines()
    assert not any(json.loads(line).get("job_id") == job_id for line in inbox)


def test_duplicate_and_out_of_order_callbacks_change_nothing(stack, simulator) -> None:
    simulator.switch(duplicate_callbacks=True, out_of_order=True)
    job_id = start_upload(stack)
    stack.wait_job_done(job_id)

    answers = wait_for(
        lambda: (
            [c["answer"] for c in simulator.callbacks(job_id)]
            if len(simulator.callbacks(job_id)) == 3
            else None
        ),
        what="three callbacks",
    )
    # The two copies of the final callback: one accepted, one a duplicate; then the stale one.
    assert sorted(answers[:2]) == [200, 202]
    assert answers[2] == 202
    inbox = [json.loads(line) for line in stack.bulkhook("inbox", "--json").stdout.splitlines()]
    stale = [r for r in inbox if r.get("job_id") == job_id and r["status"] == "RUNNING"]
    assert len(stale) == 1
    stack.wait_delivery_done(stale[0]["id"])
    assert len(lines_for(stack, job_id)) == 1
    assert jobs.get(stack.conn, job_id)["status"] == "COMPLETED"


def test_failing_handler_is_retried_alone_and_steps_are_not_repeated(stack, simulator) -> None:
    job_id = start_upload(stack)
    before = simulator.requests_seen()

    stack.wait_job_done(job_id)

    assert len(lines_for(stack, job_id)) == 1  # ran once, before flaky failed
    assert len(lines_for(stack, job_id, "flaky_outcome")) == 1  # succeeded on the retry
    after = simulator.requests_seen()
    assert after.get("simulator.errors", 0) - before.get("simulator.errors", 0) == 1
    assert after.get("simulator.status", 0) - before.get("simulator.status", 0) == 1


def test_api_answering_500_then_200_is_retried(stack, simulator) -> None:
    simulator.switch(fail_status=2)
    job_id = start_upload(stack)

    record = stack.wait_job_done(job_id)

    assert record["status"] == "COMPLETED"
    assert len(lines_for(stack, job_id)) == 1


def test_job_ending_in_error_reaches_the_handlers(stack, simulator) -> None:
    simulator.switch(fail_jobs=True)
    job_id = start_upload(stack)

    record = stack.wait_job_done(job_id)

    assert record["status"] == "ERROR"
    [outcome] = lines_for(stack, job_id)
    assert outcome["status"] == "ERROR"


def test_cancelled_job_is_processed_as_cancelled(stack, simulator) -> None:
    simulator.switch(step_seconds=30)
    job_id = start_upload(stack)
    assert stack.bulkhook("bulk", "cancel", job_id).returncode == 0

    record = stack.wait_job_done(job_id)

    assert record["status"] == "CANCELLED"


def test_jobs_command_lists_started_jobs_with_their_state(stack) -> None:
    job_id = start_upload(stack)
    stack.wait_job_done(job_id)

    listed = [json.loads(line) for line in stack.bulkhook("jobs", "--json").stdout.splitlines()]

    mine = next(r for r in listed if r["id"] == job_id)
    assert (mine["object"], mine["direction"], mine["state"]) == ("contacts", "UPLOAD", "done")
    assert "token" not in mine
    assert mine["callback_url"].startswith(f"{stack.base}/callbacks/bulk?token=")


def test_instance_configure_points_notifications_at_bulkhook_with_its_key(stack) -> None:
    assert stack.configure_output == (
        f"instance 1: notifications go to {stack.base}/callbacks/events, "
        "signed with BULKHOOK_SIGNATURE_KEY\n"
    )
    assert KEY not in stack.configure_output


def test_wrongly_signed_callbacks_are_refused_retried_and_the_job_still_reconciled(
    stack, simulator
) -> None:
    simulator.switch(wrong_key=True, retry_scale=0.002, max_retries=3)
    job_id = start_upload(stack)

    stack.wait_job_done(job_id)

    def all_attempts() -> list[dict] | None:
        found = simulator.callbacks(job_id)
        return found if len(found) == 4 else None

    attempts = wait_for(all_attempts, what="the simulator's retries")

    assert [(a["attempt"], a["answer"]) for a in attempts] == [(n, 401) for n in range(4)]
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(attempts)]
    assert gaps == sorted(gaps)  # the vendor's growing 2^(3x) schedule, scaled down


def test_early_callback_for_a_running_job_is_checked_again_until_it_finishes(
    stack, simulator
) -> None:
    simulator.switch(step_seconds=1.5, drop_callbacks=1)
    job_id = start_upload(stack)
    early = json.dumps({"id": job_id, "status": "RUNNING"}).encode()

    delivery_id = stack.post(early).json()["delivery_id"]

    record = stack.wait_delivery_done(delivery_id)
    assert record[b"outcome"].decode().startswith(f"job {job_id} is ")
    assert record[b"outcome"].decode().endswith("checking again later")
    job = stack.wait_job_done(job_id)
    assert job["status"] == "COMPLETED"
    assert int(job["checks"]) >= 2
    assert len(lines_for(stack, job_id)) == 1


def test_event_notifications_run_the_handlers_once_with_their_events(stack) -> None:
    body = json.dumps(
        {"message": {"eventId": "pipeline-ev-1", "events": [
            {"objectType": "Contact", "objectId": "1", "eventType": "CREATED"},
            {"objectType": "Contact", "objectId": "2", "eventType": "DELETED"},
        ]}}
    ).encode()  # fmt: skip
    delivery_id = stack.post(body, kind="events").json()["delivery_id"]
    assert stack.post(body, kind="events").status_code == 200

    stack.wait_delivery_done(delivery_id)

    lines = [line for line in read(stack.output) if line.get("id") == delivery_id]
    assert len(lines) == 1
    assert [e["eventType"] for e in lines[0]["events"]] == ["CREATED", "DELETED"]
    archived = stack.tmp / "outbox" / "events" / f"{delivery_id}.json"
    assert json.loads(archived.read_text())["message"]["eventId"] == "pipeline-ev-1"


def test_bulk_commands_read_the_api(stack) -> None:
    job_id = start_upload(stack)
    stack.wait_job_done(job_id)

    assert stack.bulkhook("objects").stdout.split() == ["accounts", "contacts"]
    status = json.loads(stack.bulkhook("bulk", "status", job_id).stdout)
    assert (status["status"], status["recordsCount"], status["recordsFailedCount"]) == (
        "COMPLETED", 10, 1,
    )  # fmt: skip
    [error] = [
        json.loads(line)
        for line in stack.bulkhook("bulk", "errors", job_id).stdout.split("\n")
        if line
    ]
    assert error["record"]["C_FirstName"] == "Ann"
    listed = [json.loads(line) for line in stack.bulkhook("bulk", "jobs").stdout.splitlines()]
    assert job_id in {item["id"] for item in listed}
    missing = stack.bulkhook("bulk", "status", "999")
    assert missing.returncode == 1
    assert "status of job 999 failed (HTTP 404)" in missing.stderr
