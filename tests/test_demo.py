"""`make demo`: the whole loop offline, as a newcomer runs it."""

from __future__ import annotations

import subprocess

import pytest

from .processes import REPO, environment

pytestmark = pytest.mark.slow


def test_make_demo_shows_the_seed_contacts_archived_with_one_error(tmp_path) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS=--workdir={tmp_path / 'demo'}"],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "callback verified and accepted" in out
    assert "pipeline: job 42114492 COMPLETED" in out
    assert "10 records, 1 error(s)" in out
    assert "error: C_BusPhone: invalid phone number '444) 444-1234'" in out
    assert (tmp_path / "demo" / "outbox" / "42114492" / "status.json").exists()
