"""BULKHOOK_STRICT_JOBS: bulk callbacks only for jobs bulkhook started, with their token."""

from __future__ import annotations

import pytest

from service import create_app, jobs
from service.callbacks import COUNTERS_KEY
from service.signature import sign

from .conftest import KEY, post

BODY = b'{"id": "777", "status": "COMPLETED"}'


@pytest.fixture
def strict_client(config):
    config["BULKHOOK_STRICT_JOBS"] = "true"
    return create_app(config).test_client()


def started_job(conn, job_id: str = "777") -> str:
    token = jobs.new_token()
    jobs.record_started(
        conn,
        job_id,
        object_name="contacts",
        direction=jobs.UPLOAD,
        callback=jobs.callback_url("http://hooks.example", token),
        token=token,
    )
    return token


def post_with_token(client, token: str | None, body: bytes = BODY):
    query = f"?token={token}" if token is not None else ""
    return client.post(
        f"/callbacks/bulk{query}",
        data=body,
        headers={"Elements-Webhook-Signature": sign(KEY, body)},
    )


def test_callback_for_a_job_bulkhook_did_not_start_gets_404_and_is_counted(strict_client, conn):
    response = post(strict_client, "bulk", BODY)

    assert response.status_code == 404
    assert response.get_json() == {
        "status": "unknown_job",
        "detail": "bulkhook did not start this job",
    }
    assert conn.hget(COUNTERS_KEY, "rejected_unknown_job") == b"1"
    assert conn.zcard("bulkhook:inbox") == 0


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
def test_callback_with_a_wrong_or_missing_token_gets_404(strict_client, conn, token):
    started_job(conn)

    response = post_with_token(strict_client, token)

    assert response.status_code == 404
    assert response.get_json()["detail"] == "the callback URL's token does not match the job's"


def test_callback_with_the_jobs_token_is_accepted(strict_client, conn):
    token = started_job(conn)

    assert post_with_token(strict_client, token).status_code == 202


def test_job_heard_of_but_not_started_by_bulkhook_is_refused(strict_client, conn):
    jobs.ensure(conn, "777", object_name="contacts", direction=None)

    assert post_with_token(strict_client, "").status_code == 404


def test_strict_mode_leaves_event_notifications_alone(strict_client):
    body = b'{"message": {"eventId": "e-1", "events": []}}'
    assert post(strict_client, "events", body).status_code == 202


def test_without_strict_mode_unknown_jobs_are_accepted(client):
    assert post(client, "bulk", BODY).status_code == 202


def test_signature_is_checked_before_the_job(strict_client, conn):
    started_job(conn)
    response = post(strict_client, "bulk", BODY, key="wrong")
    assert response.status_code == 401
