"""Callback delivery: signed POSTs to each job's callback URL, retried on the vendor's schedule.

Open Connectors retries a failed notification up to 5 times, 2^(3x) seconds apart
(../shared/docs/open-connectors.md §3); the simulator keeps that shape, scaled down.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from ..signature import HEADER, sign
from .state import Job, World

log = logging.getLogger(__name__)

WRONG_KEY = "not-the-instance-key"
"""What callbacks are signed with when the wrong_key switch is on."""


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    job_id: str = field(compare=False)
    status: str = field(compare=False)
    attempt: int = field(compare=False, default=0)


class Deliverer(threading.Thread):
    """Sends callbacks when due, in its own thread; keeps a log of every attempt."""

    def __init__(self, world: World, key: str | None) -> None:
        super().__init__(name="simulator-callbacks", daemon=True)
        self.world = world
        self.key = key
        self.pending: list[_Pending] = []
        self.log: list[dict[str, Any]] = []
        self.wakeup = threading.Condition()
        self.stopped = False
        self.session = requests.Session()
        self._seq = itertools.count()

    def job_finished(self, job: Job) -> None:
        """Queue the callbacks a finished job makes, as the switches say."""
        if not job.callback_url:
            return
        switches = self.world.switches
        with self.world.lock:
            if switches.drop_callbacks > 0:
                switches.drop_callbacks -= 1
                self._note(job.id, job.status, job.callback_url, 0, "dropped")
                return
        due = time.time() + switches.callback_delay
        copies = 2 if switches.duplicate_callbacks else 1
        for _ in range(copies):
            self._push(job, job.callback_document(), due)
        if switches.out_of_order:
            self._push(job, job.callback_document(status="RUNNING"), due + 0.05)

    def run(self) -> None:
        while True:
            with self.wakeup:
                while not self.stopped and (not self.pending or self.pending[0].due > time.time()):
                    timeout = self.pending[0].due - time.time() if self.pending else None
                    self.wakeup.wait(timeout)
                if self.stopped:
                    return
                item = heapq.heappop(self.pending)
            self._send(item)

    def stop(self) -> None:
        with self.wakeup:
            self.stopped = True
            self.wakeup.notify()

    def _push(self, job: Job, document: dict[str, Any], due: float) -> None:
        assert job.callback_url
        item = _Pending(
            due,
            next(self._seq),
            job.callback_url,
            json.dumps(document).encode(),
            job.id,
            document["status"],
        )
        with self.wakeup:
            heapq.heappush(self.pending, item)
            self.wakeup.notify()

    def _send(self, item: _Pending) -> None:
        switches = self.world.switches
        key = WRONG_KEY if switches.wrong_key else self.world.signature_key(self.key)
        headers = {"Content-Type": "application/json"}
        if key:
            headers[HEADER] = sign(key, item.body)
        try:
            response = self.session.post(item.url, data=item.body, headers=headers, timeout=10)
            answer: int | str = response.status_code
            delivered = response.ok
        except requests.RequestException as exc:
            answer, delivered = exc.__class__.__name__, False
        self._note(item.job_id, item.status, item.url, item.attempt, answer)
        if delivered or item.attempt >= switches.max_retries:
            return
        item.attempt += 1
        item.due = time.time() + 2 ** (3 * item.attempt) * switches.retry_scale
        with self.wakeup:
            heapq.heappush(self.pending, item)
            self.wakeup.notify()

    def _note(self, job_id: str, status: str, url: str, attempt: int, answer: Any) -> None:
        entry = {
            "job_id": job_id,
            "status": status,
            "url": url.split("?")[0],
            "attempt": attempt,
            "answer": answer,
            "at": time.time(),
        }
        with self.world.lock:
            self.log.append(entry)
        log.info("callback for job %s (%s), attempt %d: %s", job_id, status, attempt, answer)
