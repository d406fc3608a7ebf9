"""/openapi.json: it covers every public endpoint, and schemathesis, run against the live
server (the Procfile's web), finds no 5xx and no answer the document does not list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service import callbacks, openapi

from .processes import Stack

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"

# Everything but negative_data_rejection, on purpose: bulkhook accepts more than the document
# promises (extra query parameters, `events` of any type, ids by length rather than by
# numeric range), because refusing a real vendor callback costs more than accepting an odd one;
# what it accepts is recorded byte for byte. positive_data_acceptance holds it to the other
# direction: whatever the document calls valid must be accepted.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
]


def test_document_is_served_and_lists_every_public_route(app, client) -> None:
    served = client.get("/openapi.json")

    assert served.status_code == 200
    assert served.get_json() == openapi.document()
    flask_routes = {
        rule.rule
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith(("/dashboard", "/static"))
    }
    assert set(served.get_json()["paths"]) == flask_routes | set(callbacks.PATHS)


@pytest.mark.slow
@pytest.mark.parametrize("unsigned", [False, True], ids=["signed", "unsigned-allowed"])
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    tmp_path: Path, unsigned: bool
) -> None:
    """Signed: every callback it makes up fails the signature (401). Unsigned allowed: its
    bodies reach the parser and Redis (202, 200, 400)."""
    settings = {"BULKHOOK_ALLOW_UNSIGNED": "true"} if unsigned else {}
    stack = Stack(tmp_path, "schemathesis-key", **settings)
    # One schemathesis worker: with two, hypothesis describing its strategies calls
    # ast.parse from two threads, which CPython 3.11 can fail at ("AST constructor recursion
    # depth mismatch"), a harness error rather than a finding. A fixed seed keeps CI stable.
    try:
        result = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{stack.base}/openapi.json",
             "--checks", ",".join(CHECKS), "--max-examples", "60", "--seed", "20261204",
             "--suppress-health-check", "all", "--workers", "1"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    finally:
        stack.close()
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert "generated" in summary and " passed" in summary
    assert "Traceback" not in (tmp_path / "web.log").read_text()
