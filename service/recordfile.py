"""Writing records as a file Open Connectors reads or serves: CSV with a header, or JSON lines."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO


class RecordWriter:
    """Writes records one at a time; a CSV takes its header from the first record."""

    def __init__(self, out: TextIO, file_format: str) -> None:
        self.out = out
        self.csv = file_format == "csv"
        self._writer: csv.DictWriter[str] | None = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        if not self.csv:
            self.out.write(json.dumps(record) + "\n")
            return
        if self._writer is None:
            self._writer = csv.DictWriter(self.out, fieldnames=list(record))
            self._writer.writeheader()
        self._writer.writerow(record)
