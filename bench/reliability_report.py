"""Write docs/reliability.md from the figures `make reliability` collected."""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path


def main(folder: Path, out: Path) -> None:
    figures = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    lines = [
        "# Reliability report",
        "",
        f"Written by `make reliability` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({platform.machine()}, {_cores()} cores, Python {platform.python_version()}).",
        "Every figure below was measured in that run; nothing is carried over by hand.",
        "",
        "## Zero loss (tests/test_faults.py)",
        "",
        "Signed bulk callbacks through gunicorn as the Procfile runs it, 10% sent twice, the",
        "sender retrying on 503 and dropped connections as Open Connectors does; two workers",
        "(as the Procfile runs them) processing; Redis with the shipped deploy/redis.conf.",
        "Processed means the handler's downstream effect exists (made once per idempotency key).",
        "",
        "| run | callbacks | requests | concurrency | seconds | faults injected | worker restarts "
        "| acknowledged | processed | lost | duplicated effects | handler runs | answers |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in ("load", "faults"):
        run = figures.get(name)
        if run is None:
            lines.append(f"| {name} | not run | | | | | | | | | | | |")
            continue
        faults = "<br>".join(run["faults"]) or "none"
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(run["answers"].items()))
        lines.append(
            f"| {name} | {run['callbacks']} | {run['requests']} | {run['concurrency']} "
            f"| {run['seconds']} | {faults} | {run['worker_restarts']} | {run['acknowledged']} "
            f"| {run['processed']} | {run['lost']} | {run['duplicated']} "
            f"| {run['handler_invocations']} | {answers} |"
        )
    fsync = figures.get("fsync")
    lines += ["", "## What `appendfsync always` costs (bench/fsync.py)", ""]
    if fsync:
        lines += [
            f"wrk, {fsync['seconds']} s rounds of distinct bulk callbacks at concurrency "
            f"{fsync['concurrency']} (no worker running), "
            f"{len(fsync['rounds']['always'])} rounds of each, interleaved; medians.",
            "",
            "| appendfsync | accepted/s | p50 ms | p99 ms |",
            "| --- | ---: | ---: | ---: |",
        ]
        for policy, run in fsync["median"].items():
            lines.append(f"| {policy} | {run['per_second']:.0f} | {run['p50_ms']:.1f} "
                         f"| {run['p99_ms']:.1f} |")  # fmt: skip
        lines += ["", f"Throughput always/everysec, median of per-round ratios: "
                      f"**{fsync['ratio']:.2f}**.", ""]  # fmt: skip
        raw = {k: v for k, v in fsync.get("redis_alone", {}).items() if v}
        if raw:
            lines += ["Redis alone (redis-benchmark SET):", "", "| policy, clients | SET/s |",
                      "| --- | ---: |"]  # fmt: skip
            lines += [f"| {name} | {value:.0f} |" for name, value in raw.items()]
        lines += ["", "The shipped deploy/redis.conf uses `always`; its comments say why."]
    else:
        lines.append("not run")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
