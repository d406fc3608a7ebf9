"""What handlers get for a finished bulk job: its status, counts, errors and results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobOutcome:
    """A bulk job that reached a terminal status, with what was fetched for it.

    `errors_path` holds the failed rows, one JSON value per line; `results_path` the records
    file of a download job (None for uploads and unfinished downloads). `callback` is the
    callback body that announced the job, or None when the reconciler found it.
    """

    job_id: str
    status: str
    object_name: str | None
    direction: str | None
    records_count: int | None
    errors_count: int
    errors_path: Path
    results_path: Path | None
    file_format: str | None
    callback: dict[str, Any] | None
    status_document: dict[str, Any] = field(repr=False)
    kind: str = "bulk"

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of this job's pipeline: for handlers to make effects once."""
        return f"bulkhook-job-{self.job_id}-{self.status}"

    def errors(self) -> Iterator[Any]:
        """The failed rows, read one at a time."""
        with open(self.errors_path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready description (no rows), for logs, archives and forwarding."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "object_name": self.object_name,
            "direction": self.direction,
            "records_count": self.records_count,
            "errors_count": self.errors_count,
            "file_format": self.file_format,
            "has_results": self.results_path is not None,
        }
