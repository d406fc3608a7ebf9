"""The bulkhook command, through click's runner, against the real Redis."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from service.cli import main
from service.embedded_redis import free_port

from .conftest import BULK_BODY, EVENTS_BODY, KEY, post, work


def test_sign_prints_the_vendors_example_signature() -> None:
    result = CliRunner().invoke(
        main,
        ["sign", "--key", "MySecretEventSignatureKey", "-"],
        input=b"<INSERT_EVENT_NOTIFICATION_RESPONSE_BODY>",
    )
    assert result.exit_code == 0
    assert result.output == "sha256=jHdbRx5EZAsOfTwAPJOGkNUzQMVVdu5VJlxcsk+G6jQ=\n"


def test_sign_reads_the_key_from_the_environment_and_the_body_from_a_file(tmp_path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b"<INSERT_EVENT_NOTIFICATION_RESPONSE_BODY>")
    result = CliRunner().invoke(
        main, ["sign", str(body)], env={"BULKHOOK_SIGNATURE_KEY": "MySecretEventSignatureKey"}
    )
    assert result.output == "sha256=jHdbRx5EZAsOfTwAPJOGkNUzQMVVdu5VJlxcsk+G6jQ=\n"


def test_sign_without_a_key_says_how_to_give_one() -> None:
    result = CliRunner().invoke(main, ["sign", "-"], input=b"{}")
    assert result.exit_code == 1
    assert "pass --key, or set BULKHOOK_SIGNATURE_KEY" in result.output


@pytest.mark.parametrize("command", [["inbox"], ["jobs"], ["failed", "list"]])
def test_a_redis_that_cannot_be_reached_is_one_clear_line(command) -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"  # nothing listens there
    result = CliRunner().invoke(main, command, env={"REDIS_URL": url,
                                                    "BULKHOOK_SIGNATURE_KEY": KEY})  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach Redis: ")
    assert "hunter2" not in result.output
    assert result.exc_info is not None and result.exc_info[0] is SystemExit  # no traceback


def test_inbox_lists_recent_deliveries_newest_first(client, conn, redis_url) -> None:
    first = post(client, "bulk", BULK_BODY).get_json()["delivery_id"]
    second = post(client, "events", EVENTS_BODY).get_json()["delivery_id"]
    work(conn)

    result = CliRunner().invoke(main, ["inbox", "--json"], env={"REDIS_URL": redis_url})

    assert result.exit_code == 0
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in records] == [second, first]
    assert records[1]["job_id"] == "42114492"
    assert records[1]["status"] == "COMPLETED"
    assert {r["state"] for r in records} == {"done"}
    assert all("body" not in r for r in records)


def test_inbox_limit_and_table(client, redis_url) -> None:
    for job in range(3):
        post(client, "bulk", json.dumps({"id": job, "status": "COMPLETED"}).encode())

    result = CliRunner().invoke(main, ["inbox", "--limit", "2"], env={"REDIS_URL": redis_url})

    lines = result.output.splitlines()
    assert lines[0].startswith("RECEIVED (UTC)")
    assert len(lines) == 3
    assert " 2 " in lines[1] and "queued" in lines[1]


def test_inbox_without_redis_url_says_what_to_set() -> None:
    result = CliRunner().invoke(main, ["inbox"])
    assert result.exit_code == 1
    assert "REDIS_URL is not set" in result.output


def test_inbox_keeps_a_bounded_history(config, redis_url) -> None:
    from service import create_app

    config["BULKHOOK_INBOX_SIZE"] = "3"
    client = create_app(config).test_client()
    for job in range(5):
        post(client, "bulk", json.dumps({"id": job, "status": "COMPLETED"}).encode(), key=KEY)

    result = CliRunner().invoke(main, ["inbox", "--json"], env={"REDIS_URL": redis_url})

    assert [json.loads(line)["job_id"] for line in result.output.splitlines()] == ["4", "3", "2"]
