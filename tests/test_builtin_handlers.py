"""The built-in handlers: archive and forward, on job outcomes and deliveries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from service.delivery import Delivery
from service.exceptions import ConfigError
from service.handlers import archive, forward, log_outcome
from service.outcome import JobOutcome
from service.signature import verify


def outcome(tmp_path: Path, results: bool = True) -> JobOutcome:
    errors = tmp_path / "errors.jsonl"
    errors.write_text('{"error": "bad phone", "record": {"id": 1}}\n')
    records = tmp_path / "records.csv"
    records.write_text("id,email\n1,a@x.io\n")
    return JobOutcome(
        job_id="42", status="COMPLETED", object_name="contacts", direction="DOWNLOAD",
        records_count=1, errors_count=1, errors_path=errors,
        results_path=records if results else None, file_format="csv",
        callback={"id": "42", "status": "COMPLETED"}, status_document={"id": "42"},
    )  # fmt: skip


class Captured(BaseHTTPRequestHandler):
    requests: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Captured.requests.append((dict(self.headers), body))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def next_system() -> Iterator[str]:
    Captured.requests = []
    server = HTTPServer(("127.0.0.1", 0), Captured)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/incoming"
    server.shutdown()
    server.server_close()


def test_archive_writes_status_errors_and_records(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BULKHOOK_OUTBOX_DIR", str(tmp_path / "outbox"))

    folder = Path(archive(outcome(tmp_path)))

    assert folder == tmp_path / "outbox" / "42"
    status = json.loads((folder / "status.json").read_text())
    assert (status["records_count"], status["errors_count"], status["has_results"]) == (1, 1, True)
    assert status["callback"] == {"id": "42", "status": "COMPLETED"}
    assert (folder / "errors.jsonl").read_text().count("\n") == 1
    assert (folder / "records.csv").read_text() == "id,email\n1,a@x.io\n"


def test_archive_again_replaces_rather_than_fails(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BULKHOOK_OUTBOX_DIR", str(tmp_path / "outbox"))
    archive(outcome(tmp_path))
    assert Path(archive(outcome(tmp_path))).is_dir()


def test_forward_posts_a_summary_signed_with_the_forward_key(tmp_path, monkeypatch, next_system):
    monkeypatch.setenv("BULKHOOK_FORWARD_URL", next_system)
    monkeypatch.setenv("BULKHOOK_FORWARD_KEY", "forward-key-1")

    assert forward(outcome(tmp_path)) == "forwarded, HTTP 202"

    [(headers, body)] = Captured.requests
    verify(headers["Elements-Webhook-Signature"], body, ["forward-key-1"])
    assert headers["Idempotency-Key"] == "bulkhook-job-42-COMPLETED"
    summary = json.loads(body)
    assert (summary["job_id"], summary["status"], summary["errors_count"]) == ("42", "COMPLETED", 1)
    assert summary["errors"] == [{"error": "bad phone", "record": {"id": 1}}]


def test_forward_of_an_event_notification_carries_its_events(monkeypatch, next_system) -> None:
    monkeypatch.setenv("BULKHOOK_FORWARD_URL", next_system)
    monkeypatch.setenv("BULKHOOK_FORWARD_KEY", "k")
    delivery = Delivery(
        id="d1", kind="events", job_id=None, status=None, received_at=datetime.now(UTC),
        body={"message": {"events": [{"eventType": "UPDATED"}]}},
    )  # fmt: skip

    forward(delivery)

    [(_, body)] = Captured.requests
    assert json.loads(body)["events"] == [{"eventType": "UPDATED"}]


def test_forward_without_its_settings_says_which(tmp_path) -> None:
    with pytest.raises(ConfigError, match="BULKHOOK_FORWARD_URL and BULKHOOK_FORWARD_KEY"):
        forward(outcome(tmp_path))


def test_log_outcome_summarises_a_job(tmp_path) -> None:
    assert log_outcome(outcome(tmp_path)) == "bulk job 42 COMPLETED: 1 records, 1 errors"
