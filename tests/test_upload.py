"""Files for bulk upload: the seed's TSV, CSV, JSON lines, and files that cannot be read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from service.upload import UploadFileError, detect, prepared, progress_reporter, records

from .processes import REPO

CONTACTS = REPO / "examples" / "contacts.tsv"


def test_seed_tsv_is_read_with_its_tab_delimiter() -> None:
    rows = list(records(CONTACTS))

    assert len(rows) == 10
    assert rows[2]["C_BusPhone"] == "444) 444-1234"
    assert rows[1]["C_Title"] == ""  # empty fields survive
    assert detect(CONTACTS) == "csv"


def test_tsv_is_sent_as_comma_csv(tmp_path: Path) -> None:
    with prepared(CONTACTS, "csv") as (path, count):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    assert count == 10
    assert rows == list(records(CONTACTS))


def test_tsv_is_sent_as_json_lines() -> None:
    with prepared(CONTACTS, "json") as (path, count):
        lines = path.read_text().splitlines()
    assert count == len(lines) == 10
    assert json.loads(lines[0])["C_EmailAddress"] == "norm.smith@acme.com"


@pytest.mark.parametrize(
    "content", ['{"a": 1}\n{"a": 2}\n', '[{"a": 1}, {"a": 2}]', '\ufeff{"a": 1}\n\n{"a": 2}']
)
def test_json_lines_and_arrays_are_read(tmp_path: Path, content: str) -> None:
    source = tmp_path / "rows.json"
    source.write_text(content, encoding="utf-8")
    assert detect(source) == "json"
    assert list(records(source)) == [{"a": 1}, {"a": 2}]


def test_semicolon_csv_is_sniffed(tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("email;name\na@x.io;A\nb@x.io;B\n")
    assert [r["name"] for r in records(source)] == ["A", "B"]


def test_json_line_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "rows.json"
    source.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UploadFileError, match="record 2 is not a JSON object"):
        list(records(source))


def test_row_with_more_fields_than_the_header_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("email,name\na@x.io,A,extra\n")
    with pytest.raises(UploadFileError, match="more fields than the header"):
        list(records(source))


def test_progress_without_a_terminal_is_plain_lines(capsys) -> None:
    update, close = progress_reporter("upload x")
    for done in (0, 50, 100):
        update(done, 100)
    close()
    assert capsys.readouterr().err.splitlines() == [
        "upload x: 0% (0 of 100 bytes)",
        "upload x: 50% (50 of 100 bytes)",
        "upload x: 100% (100 of 100 bytes)",
    ]
