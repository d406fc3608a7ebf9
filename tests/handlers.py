"""Handlers used by the tests, named in BULKHOOK_HANDLERS as a user's own would be."""

from __future__ import annotations

import json
import os
from pathlib import Path

from service.delivery import Delivery


def _append(name: str, delivery: Delivery) -> None:
    line = {
        "handler": name,
        "id": delivery.id,
        "kind": delivery.kind,
        "job_id": delivery.job_id,
        "status": delivery.status,
        "event_id": delivery.event_id,
        "webhook_id": delivery.webhook_id,
        "signed": delivery.signed,
        "received_at": delivery.received_at.isoformat(),
        "body": delivery.body,
        "events": delivery.events,
    }
    # One write per line with O_APPEND: lines from concurrent workers do not interleave.
    with open(os.environ["BULKHOOK_TEST_OUTPUT"], "a") as out:
        out.write(json.dumps(line) + "\n")


def record(delivery: Delivery) -> str:
    """Append the delivery to the test output file."""
    _append("record", delivery)
    return "recorded"


def flaky(delivery: Delivery) -> str:
    """Fail on the first call for a delivery, succeed after."""
    marker = Path(os.environ["BULKHOOK_TEST_OUTPUT"] + f".{delivery.id}.flaky")
    if not marker.exists():
        marker.touch()
        raise RuntimeError("flaky handler fails once")
    _append("flaky", delivery)
    return "flaky ok"


def always_fails(delivery: Delivery) -> None:
    """Fail every time."""
    raise ValueError(f"cannot handle {delivery.id}")


def read(path: Path) -> list[dict]:
    """The lines the handlers wrote, parsed."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def record_outcome(outcome) -> str:
    """Append a job outcome (bulk, API configured) or a delivery (events) to the output."""
    from service.outcome import JobOutcome

    if not isinstance(outcome, JobOutcome):
        _append("record", outcome)
        return "recorded"
    line = {
        "handler": "record_outcome",
        **outcome.summary(),
        "errors": list(outcome.errors()),
        "results_path": str(outcome.results_path) if outcome.results_path else None,
        "callback": outcome.callback,
    }
    with open(os.environ["BULKHOOK_TEST_OUTPUT"], "a") as out:
        out.write(json.dumps(line) + "\n")
    return "recorded"


def flaky_outcome(outcome) -> str:
    """Fail the first time for each job or delivery, succeed after."""
    name = getattr(outcome, "job_id", None) or outcome.id
    marker = Path(os.environ["BULKHOOK_TEST_OUTPUT"] + f".{name}.flaky")
    if not marker.exists():
        marker.touch()
        raise RuntimeError("flaky handler fails once")
    with open(os.environ["BULKHOOK_TEST_OUTPUT"], "a") as out:
        out.write(json.dumps({"handler": "flaky_outcome", "job_id": name}) + "\n")
    return "flaky ok"


def effect_once(item) -> str:
    """Make a downstream effect once per idempotency key, and log every invocation.

    The effect is a file created with O_EXCL, named by the key: a second invocation for the
    same delivery (a task run again after its worker was killed) finds it and does nothing,
    as a real downstream system keyed on Idempotency-Key would.
    """
    folder = Path(os.environ["BULKHOOK_TEST_OUTPUT"] + ".effects")
    folder.mkdir(exist_ok=True)
    with open(os.environ["BULKHOOK_TEST_OUTPUT"], "a") as out:
        out.write(json.dumps({"handler": "effect_once", "key": item.idempotency_key,
                              "job_id": item.job_id}) + "\n")  # fmt: skip
    # Written aside, then linked into place: the effect appears whole or not at all. (Made
    # with O_EXCL and then written, a worker SIGKILLed in between left an empty effect: seen
    # once in the fault suite as a "lost" callback whose effect was there, unlabelled.)
    draft = folder / f".{item.idempotency_key}.{os.getpid()}"
    draft.write_text(item.job_id or "")
    try:
        os.link(draft, folder / item.idempotency_key)
    except FileExistsError:
        return "already done"
    finally:
        draft.unlink()
    return "done"


def slow(item) -> str:
    """Take two seconds, then record: for graceful-shutdown tests."""
    import time

    time.sleep(2)
    _append("slow", item)
    return "slow done"


def effect_then_die(item) -> str:
    """Make the effect, then kill this process before bulkhook can record the success, once."""
    result = effect_once(item)
    marker = Path(os.environ["BULKHOOK_TEST_OUTPUT"] + f".{item.id}.died")
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), 9)
    return result


def fails_until_allowed(item) -> str:
    """Fail until the file <BULKHOOK_TEST_OUTPUT>.allow exists: a task to dead-letter, then
    requeue once the cause is fixed."""
    if not Path(os.environ["BULKHOOK_TEST_OUTPUT"] + ".allow").exists():
        raise RuntimeError("downstream system unavailable")
    _append("fails_until_allowed", item)
    return "delivered after all"


def states(delivery: Delivery) -> str:
    """Append the state of every delivery's record as Redis has it while this handler runs
    (after sleeping BULKHOOK_TEST_HANDLER_SECONDS, if set: a slow handler)."""
    import time

    from rq import get_current_job

    time.sleep(float(os.environ.get("BULKHOOK_TEST_HANDLER_SECONDS", "0")))
    job = get_current_job()
    assert job is not None, "runs in an RQ worker"
    conn = job.connection
    seen = {
        key.decode().rsplit(":", 1)[1]: conn.hget(key, "state").decode()
        for key in conn.scan_iter("bulkhook:delivery:*")
    }
    with open(os.environ["BULKHOOK_TEST_OUTPUT"], "a") as out:
        out.write(json.dumps({"handler": "states", "id": delivery.id, "states": seen}) + "\n")
    return "seen"


def lone_surrogate(delivery: Delivery) -> str:
    """Return text no UTF-8 encoder takes (as a handler echoing a body's "\\ud800" would)."""
    return f"odd {chr(0xD800)} text for {delivery.id}"
