"""The Open Connectors API client: every outbound call bulkhook makes goes through here.

Each call has a name (used in errors), a timeout, retries with backoff on 429/5xx and
connection errors (a POST only where the server cannot have acted on it), and a shared rate
limit. Facts about the endpoints: ../shared/docs/open-connectors.md §4.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import requests
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor

from .config import Settings
from .exceptions import BulkhookError
from .payloads import TERMINAL_STATUSES, normalise_status
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

CALLBACK_HEADER = "Elements-Async-Callback-Url"
"""Header that tells Open Connectors where to POST when a v2 bulk job finishes."""

NEXT_PAGE_HEADER = "Elements-Next-Page-Token"
"""Response header holding the token of the next page; absent on the last page."""

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers worth another try: the server is busy or broken for a moment."""

POST_RETRY_STATUSES = frozenset({429, 503})
"""Answers that say a POST was not acted on, so sending it again cannot start a second job."""

ACCEPT = {"csv": "text/csv", "json": "application/json", "jsonl": "application/jsonl"}
"""Accept header per result file format; it must match the job's format (§4.6)."""

V3_FORMATS = {"csv": "txt/csv", "json": "application/json", "jsonl": "application/jsonl"}
"""`format` values of a v3 download job, as the API spells them (`txt/csv` sic)."""


class ApiError(BulkhookError):
    """An API call failed; says which call, the HTTP status (None if no answer) and why."""

    def __init__(self, call: str, status: int | None, detail: str) -> None:
        self.call = call
        self.status = status
        self.detail = detail
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{call} failed ({where}): {detail}")


@dataclass(frozen=True)
class JobStatus:
    """A bulk job's status, read from the v2 or the v3 field names."""

    job_id: str
    status: str
    records_count: int | None
    errors_count: int | None
    object_name: str | None
    direction: str | None
    file_format: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def terminal(self) -> bool:
        """Nothing more will happen to the job."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def parse(cls, job_id: str, doc: dict[str, Any]) -> JobStatus:
        """Read a status document leniently: `status` or `jobStatus`, v2 or v3 counts."""
        raw_status = doc.get("status") or doc.get("jobStatus") or doc.get("job_status") or ""
        direction = doc.get("jobDirection") or doc.get("job_direction")
        file_format = doc.get("fileFormat") or doc.get("format")
        return cls(
            job_id=str(doc.get("id") or job_id),
            status=normalise_status(str(raw_status)) if raw_status else "UNKNOWN",
            records_count=_first_int(doc, "recordsCount", "recordCount", "record_count"),
            errors_count=_first_int(doc, "recordsFailedCount", "errorCount", "error_count"),
            object_name=doc.get("objectName") or doc.get("object_name"),
            direction=str(direction).upper() if direction else None,
            file_format=format_name(file_format) if file_format else None,
            raw=doc,
        )


def format_name(value: str) -> str:
    """Map the API's format spellings (CSV, txt/csv, application/jsonl, ...) to csv/json/jsonl."""
    lowered = str(value).lower()
    for name in ("jsonl", "json", "csv"):
        if lowered.endswith(name):
            return name
    return lowered


class Client:
    """One Open Connectors account: base URL, credentials, session, limits."""

    def __init__(
        self,
        base_url: str,
        element_token: str,
        user_secret: str,
        organization_secret: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.limiter = limiter
        self.session = requests.Session()
        auth = f"Element {element_token}, User {user_secret}"
        if organization_secret:
            auth += f", Organization {organization_secret}"
        self.session.headers["Authorization"] = auth

    @classmethod
    def from_settings(cls, settings: Settings, conn: Any = None) -> Client:
        """Build a client from settings; with a Redis `conn`, the rate limit is shared."""
        settings.require_api()
        assert settings.openconnectors_url and settings.element_token and settings.user_secret
        return cls(
            settings.openconnectors_url,
            settings.element_token,
            settings.user_secret,
            settings.organization_secret,
            timeout=settings.api_timeout_seconds,
            limiter=RateLimiter(settings.api_rate_limit, conn),
        )

    # Discovery

    def objects(self) -> list[str]:
        """GET /objects: the object names the instance offers."""
        return list(self._json("list objects", "GET", "/objects"))

    # Starting jobs

    def upload(
        self,
        object_name: str,
        file: Path,
        *,
        file_format: str,
        callback_url: str | None,
        identifier_field: str | None = None,
        action: str | None = None,
        callback_payload: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """POST /bulk/{object}: stream `file` up as multipart; return the new job."""
        meta: dict[str, Any] = {"format": file_format}
        if identifier_field:
            meta["identifierFieldName"] = identifier_field
        if action:
            meta["action"] = action
        if callback_payload is not None:
            meta["callback-payload"] = callback_payload
        content_type = "text/csv" if file_format == "csv" else "application/json"
        with open(file, "rb") as handle:
            encoder = MultipartEncoder(
                fields={
                    "metaData": json.dumps(meta),
                    "file": (file.name, handle, content_type),
                }
            )
            monitor = MultipartEncoderMonitor(
                encoder, (lambda m: progress(m.bytes_read, m.len)) if progress else None
            )
            headers = {"Content-Type": monitor.content_type}
            if callback_url:
                headers[CALLBACK_HEADER] = callback_url
            # A streamed body cannot be replayed: this call is not retried.
            response = self._request(
                f"upload {object_name}",
                "POST",
                f"/bulk/{object_name}",
                data=monitor,
                headers=headers,
                retry=False,
            )
        return dict(response.json())

    def query(self, q: str, *, callback_url: str | None) -> dict[str, Any]:
        """POST /bulk/query: start a v2 download job from a CEQL query."""
        headers = {CALLBACK_HEADER: callback_url} if callback_url else {}
        return dict(
            self._json(
                "bulk query",
                "POST",
                "/bulk/query",
                params={"q": q},
                headers=headers,
                files={"metaData": (None, "{}", "application/json")},
            )
        )

    def download(
        self,
        object_name: str,
        *,
        file_format: str = "json",
        where: str | None = None,
        select_fields: str | None = None,
        limit: int | None = None,
        notification_url: str | None = None,
    ) -> dict[str, Any]:
        """POST /bulk/download: start a v3 download job from JSON criteria."""
        criteria: dict[str, Any] = {"objectName": object_name, "format": V3_FORMATS[file_format]}
        for key, value in (
            ("where", where),
            ("selectFields", select_fields),
            ("limit", limit),
            ("notificationUrl", notification_url),
        ):
            if value is not None:
                criteria[key] = value
        return dict(self._json(f"download {object_name}", "POST", "/bulk/download", json=criteria))

    # Reading jobs

    def status(self, job_id: str) -> JobStatus:
        """GET /bulk/{id}/status, parsed leniently."""
        doc = self._json(f"status of job {job_id}", "GET", f"/bulk/{job_id}/status")
        if not isinstance(doc, dict):
            raise ApiError(f"status of job {job_id}", 200, "answer is not a JSON object")
        return JobStatus.parse(job_id, doc)

    def errors(self, job_id: str, page_size: int = 200) -> Iterator[Any]:
        """GET /bulk/{id}/errors, every page, one failed row at a time."""
        params: dict[str, Any] = {"pageSize": page_size}
        while True:
            response = self._request(
                f"errors of job {job_id}", "GET", f"/bulk/{job_id}/errors", params=params
            )
            page = response.json()
            if not isinstance(page, list):
                raise ApiError(f"errors of job {job_id}", 200, "answer is not a JSON array")
            yield from page
            token = response.headers.get(NEXT_PAGE_HEADER)
            if not token or not page:
                return
            params["nextPage"] = token

    def results(self, job_id: str, object_name: str, file_format: str, dest: BinaryIO) -> int:
        """GET /bulk/{id}/{object}: stream the results into `dest`; return the bytes written."""
        call = f"results of job {job_id}"
        response = self._request(
            call,
            "GET",
            f"/bulk/{job_id}/{object_name}",
            headers={"Accept": ACCEPT[file_format]},
            stream=True,
        )
        written = 0
        try:
            for chunk in response.iter_content(chunk_size=256 * 1024):
                dest.write(chunk)
                written += len(chunk)
        except requests.RequestException as exc:
            raise ApiError(call, response.status_code, f"download cut short: {exc}") from None
        finally:
            response.close()
        return written

    def cancel(self, job_id: str) -> None:
        """PUT /bulk/{id}/cancel."""
        self._request(f"cancel job {job_id}", "PUT", f"/bulk/{job_id}/cancel")

    def jobs(self, where: str | None = None) -> list[dict[str, Any]]:
        """GET /bulk/jobs."""
        params = {"where": where} if where else None
        return list(self._json("list jobs", "GET", "/bulk/jobs", params=params))

    # Instances

    def configure_instance(
        self, instance_id: str, callback_url: str, signature_key: str | None
    ) -> dict[str, Any]:
        """PATCH /instances/{id}: point its notifications at bulkhook, signed with our key."""
        configuration = {
            "event.notification.enabled": "true",
            "event.notification.callback.url": callback_url,
        }
        if signature_key:
            configuration["event.notification.signature.key"] = signature_key
        return dict(
            self._json(
                f"configure instance {instance_id}",
                "PATCH",
                f"/instances/{instance_id}",
                json={"configuration": configuration},
            )
        )

    # Plumbing

    def _json(self, call: str, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(call, method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(call, response.status_code, "answer is not JSON") from None

    def _request(
        self, call: str, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> requests.Response:
        retry_statuses = POST_RETRY_STATUSES if method == "POST" else RETRY_STATUSES
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            last = not retry or attempt == self.retries
            if self.limiter is not None:
                self.limiter.wait()
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as exc:
                # Refused or reset: for a POST only a refused connect is surely not acted on.
                if last or (method == "POST" and not _never_connected(exc)):
                    raise ApiError(call, None, f"cannot reach {self.base_url}: {exc}") from None
                self._pause(call, attempt, None)
                continue
            except requests.Timeout:
                if last or method == "POST":
                    raise ApiError(call, None, f"no answer within {self.timeout} s") from None
                self._pause(call, attempt, None)
                continue
            if response.status_code in retry_statuses and not last:
                self._pause(call, attempt, response)
                continue
            if response.status_code >= 400:
                raise ApiError(call, response.status_code, _explain(response))
            return response
        raise AssertionError("unreachable")

    def _pause(self, call: str, attempt: int, response: requests.Response | None) -> None:
        delay = self.backoff * 2**attempt * random.uniform(0.5, 1.5)
        if response is not None:
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                delay = max(delay, min(float(retry_after), 60.0))
            response.close()
        what = f"HTTP {response.status_code}" if response is not None else "no connection"
        log.warning("%s: %s, trying again in %.1f s", call, what, delay)
        time.sleep(delay)


def _never_connected(exc: requests.ConnectionError) -> bool:
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text


def _explain(response: requests.Response) -> str:
    hints = {
        401: "check BULKHOOK_ELEMENT_TOKEN and BULKHOOK_USER_SECRET",
        403: "the credentials may not use this instance or call",
        404: "no such job, object or instance",
    }
    try:
        body = response.json()
        message = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    detail = message or response.text[:200] or response.reason
    hint = hints.get(response.status_code)
    return f"{detail} ({hint})" if hint else str(detail)


def _first_int(doc: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = doc.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    return None
