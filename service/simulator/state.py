"""The simulator's world: objects and their records, bulk jobs, instances, switches."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..recordfile import RecordWriter

TERMINAL = frozenset({"COMPLETED", "ERROR", "ABORTED", "CANCELLED"})
DEFAULT_OBJECTS = ("accounts", "contacts")
FORMATS = ("csv", "json", "jsonl")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_CHARS = re.compile(r"^[\d\s()+.\-]+$")


@dataclass
class Switches:
    """Knobs for tests and demos; changed at start-up or through /_simulator/switches."""

    step_seconds: float = 0.5
    """Time a job spends in each of CREATED and RUNNING."""
    callback_delay: float = 0.0
    """Seconds between a job finishing and its callback being sent."""
    drop_callbacks: int = 0
    """Drop (never send) the next N callbacks."""
    duplicate_callbacks: bool = False
    """Send every callback twice."""
    out_of_order: bool = False
    """After a job's final callback, also send a stale RUNNING one."""
    wrong_key: bool = False
    """Sign callbacks with a key the receiver does not know."""
    fail_status: int = 0
    """Answer 500 to the next N status requests."""
    fail_jobs: bool = False
    """Jobs end in ERROR instead of COMPLETED."""
    synthetic_records: int = 0
    """Download jobs return this many generated records instead of the stored ones."""
    retry_scale: float = 0.01
    """The vendor's retry delays (2^(3x) s, x = 1..5) are multiplied by this."""
    max_retries: int = 5
    """Failed callback deliveries are retried this many times."""

    def update(self, changes: dict[str, Any]) -> None:
        """Apply known switches from `changes`; unknown names are a ValueError."""
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown switch {name!r}")
            current = getattr(self, name)
            setattr(self, name, type(current)(value))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Job:
    """One simulated bulk job."""

    id: str
    version: str  # "v2" or "v3"
    direction: str  # "UPLOAD" or "DOWNLOAD"
    object_name: str
    file_format: str
    callback_url: str | None
    instance_id: int
    created: float = field(default_factory=time.time)
    status: str = "CREATED"
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    errors: list[dict[str, Any]] = field(default_factory=list, repr=False)
    synthetic: int = 0
    callback_payload: Any = None
    cancel_requested: bool = False
    fail: bool = False
    completed: float | None = None

    @property
    def records_count(self) -> int:
        return self.synthetic or len(self.records) + (
            len(self.errors) if self.direction == "UPLOAD" else 0
        )

    def status_document(self) -> dict[str, Any]:
        """GET /bulk/{id}/status, with the field names of the job's bulk version."""
        if self.version == "v3":
            return {
                "id": self.id,
                "jobStatus": self.status,
                "recordCount": self.records_count,
                "errorCount": len(self.errors),
                "objectName": self.object_name,
                "jobDirection": self.direction,
                "fileFormat": self.file_format.upper(),
                "createdDate": int(self.created * 1000),
                "completionTime": int(self.completed * 1000) if self.completed else None,
                "notificationUrl": self.callback_url,
                "statusMessage": "",
                "native": False,
            }
        return {
            "id": self.id,
            "instanceId": self.instance_id,
            "status": self.status,
            "objectName": self.object_name,
            "recordsCount": self.records_count,
            "recordsFailedCount": len(self.errors),
        }

    def callback_document(self, status: str | None = None) -> dict[str, Any]:
        """The flat summary POSTed to the callback URL (status overridable for stale ones)."""
        doc = {
            "id": self.id,
            "status": status or self.status,
            "fileFormat": self.file_format,
            "instanceId": self.instance_id,
            "objectName": self.object_name,
            "recordsCount": self.records_count,
            "recordsFailedCount": len(self.errors),
        }
        if self.callback_payload is not None:
            doc["callback-payload"] = self.callback_payload
        return doc

    def list_item(self) -> dict[str, Any]:
        """An item of GET /bulk/jobs (snake_case, as the swagger's BulkJobList)."""
        return {
            "id": self.id,
            "instanceId": self.instance_id,
            "object_name": self.object_name,
            "job_direction": self.direction,
            "status": self.status,
            "record_count": self.records_count,
            "error_count": len(self.errors),
            "fileFormat": self.file_format,
            "notification_url": self.callback_url,
            "createdDate": int(self.created * 1000),
        }


class World:
    """Everything the simulator knows, behind one lock."""

    def __init__(self, switches: Switches, instance_id: int = 1) -> None:
        self.switches = switches
        self.instance_id = instance_id
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.records: dict[str, list[dict[str, Any]]] = {name: [] for name in DEFAULT_OBJECTS}
        self.instances: dict[str, dict[str, Any]] = {str(instance_id): {}}
        self.requests: Counter[str] = Counter()
        self._ids = itertools.count(42114492)

    def new_job(self, **kwargs: Any) -> Job:
        with self.lock:
            job = Job(
                id=str(next(self._ids)),
                instance_id=self.instance_id,
                fail=self.switches.fail_jobs,
                **kwargs,
            )
            self.jobs[job.id] = job
            return job

    def advance(self, now: float) -> list[Job]:
        """Move jobs along by the clock; return those that just became terminal."""
        finished = []
        step = self.switches.step_seconds
        with self.lock:
            for job in self.jobs.values():
                if job.status in TERMINAL:
                    continue
                if job.cancel_requested:
                    job.status = "CANCELLED"
                elif now - job.created >= 2 * step:
                    job.status = "ERROR" if job.fail else "COMPLETED"
                    if job.direction == "UPLOAD" and job.status == "COMPLETED":
                        self.records.setdefault(job.object_name, []).extend(job.records)
                elif now - job.created >= step:
                    job.status = "RUNNING"
                if job.status in TERMINAL:
                    job.completed = now
                    finished.append(job)
        return finished

    def signature_key(self, fallback: str | None) -> str | None:
        """The instance's key, if one was configured through the API, else `fallback`."""
        config = self.instances.get(str(self.instance_id), {})
        return config.get("event.notification.signature.key") or fallback


def parse_upload(data: bytes, file_format: str) -> list[dict[str, Any]]:
    """Rows of an uploaded file: CSV (delimiter sniffed) or JSON, one record per line."""
    text = data.decode("utf-8-sig")
    if file_format == "csv":
        sample = text[:4096]
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",\t;")
        except csv.Error:
            dialect = csv.excel
        return [dict(row) for row in csv.DictReader(io.StringIO(text), dialect=dialect)]
    stripped = text.strip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError("every record must be a JSON object")
    return rows


def validate(row: dict[str, Any]) -> str | None:
    """Why the vendor would refuse a row (a bad e-mail or phone number), or None."""
    for name, value in row.items():
        if value in (None, "") or not isinstance(value, str):
            continue
        lowered = name.lower()
        if "email" in lowered and not _EMAIL.match(value):
            return f"{name}: invalid e-mail address {value!r}"
        if "phone" in lowered and not _valid_phone(value):
            return f"{name}: invalid phone number {value!r}"
    return None


def _valid_phone(value: str) -> bool:
    if not _PHONE_CHARS.match(value):
        return False
    depth = 0
    for char in value:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            return False
    digits = sum(c.isdigit() for c in value)
    return depth == 0 and 7 <= digits <= 15


def synthetic_record(index: int) -> dict[str, Any]:
    """A generated contact, for large result files."""
    return {
        "id": index,
        "email": f"contact{index}@example.com",
        "firstName": f"First{index}",
        "lastName": f"Last{index}",
        "phone": f"(555) 555-{index % 10000:04d}",
        "company": f"Company {index % 997}",
    }


def render(records: Iterator[dict[str, Any]], file_format: str) -> Iterator[bytes]:
    """Stream records as a results file: CSV with a header, or one JSON record per line.

    Yielded in blocks of about 64 KiB: one write per record would cost a system call each.
    """
    buffer = io.StringIO()
    writer = RecordWriter(buffer, file_format)
    for record in records:
        writer.write(record)
        if buffer.tell() > 65536:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()
