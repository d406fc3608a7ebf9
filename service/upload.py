"""Preparing a file for a bulk upload: CSV, TSV or JSON lines in, csv or json out, streamed."""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .exceptions import BulkhookError
from .recordfile import RecordWriter

SNIFF_BYTES = 64 * 1024
"""How much of a delimited file is read to guess its delimiter."""


class UploadFileError(BulkhookError):
    """The file to upload cannot be read as CSV, TSV or JSON lines."""


def detect(path: Path) -> str:
    """Return "json" for JSON lines (or a JSON array), "csv" for a delimited file."""
    with open(path, encoding="utf-8-sig") as handle:
        start = handle.read(SNIFF_BYTES).lstrip()
    return "json" if start.startswith(("{", "[")) else "csv"


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Read records one at a time, whatever the input's shape (delimiter sniffed)."""
    if detect(path) == "json":
        yield from _json_records(path)
        return
    with open(path, encoding="utf-8-sig", newline="") as handle:
        sample = handle.read(SNIFF_BYTES)
        handle.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",\t;|")
        except csv.Error:
            dialect = csv.excel_tab if "\t" in sample.splitlines()[0] else csv.excel
        for row in csv.DictReader(handle, dialect=dialect):
            if None in row:
                raise UploadFileError(f"{path}: a row has more fields than the header")
            yield row


@contextmanager
def prepared(path: Path, file_format: str) -> Iterator[tuple[Path, int]]:
    """A temporary copy of `path` in `file_format` (comma CSV or JSON lines) and its count."""
    with tempfile.TemporaryDirectory(prefix="bulkhook-upload-") as folder:
        target = Path(folder) / f"{path.stem}.{file_format}"
        count = 0
        with open(target, "w", encoding="utf-8", newline="") as out:
            writer = RecordWriter(out, file_format)
            for record in records(path):
                writer.write(record)
                count += 1
        yield target, count


def _json_records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8-sig") as handle:
        first = handle.read(1)
        handle.seek(0)
        if first == "[":
            items = json.load(handle)  # a JSON array has to be read whole
        else:
            items = (json.loads(line) for line in handle if line.strip())
        for number, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise UploadFileError(f"{path}: record {number} is not a JSON object")
            yield item


def progress_reporter(label: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress callback and its closer: a rich bar on a terminal, plain lines otherwise."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        )
        task = bar.add_task(label, total=None)
        bar.start()

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return update, bar.stop

    shown = {"step": -1}

    def plain(done: int, total: int) -> None:
        step = int(done * 10 / total) if total else 10
        if step > shown["step"]:
            shown["step"] = step
            print(
                f"{label}: {done * 100 // max(total, 1)}% ({done} of {total} bytes)",
                file=sys.stderr,
            )

    return plain, lambda: None
