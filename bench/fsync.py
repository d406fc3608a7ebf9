"""What `appendfsync always` costs against `everysec`, measured through the real service.

Rounds alternate between the two Redis settings (the rest of deploy/redis.conf unchanged),
each a fresh Redis and gunicorn as the Procfile runs them, driven over loopback by wrk (as
`make bench` drives them: a Python sender topped out near 1,000 callbacks/s, below either
setting, and its ratio was noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import REPO, EmbeddedRedis, web_stack
from run import Target, b64_signer, ensure_tools, wrk

POLICIES = ("everysec", "always")


def raw_redis(policy: str, clients: int) -> float | None:
    """SETs per second redis-benchmark gets from Redis alone with this policy."""
    import re
    import shutil
    import subprocess

    if shutil.which("redis-benchmark") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp), config=REPO / "deploy" / "redis.conf",
                              extra_args=("--appendfsync", policy)).start()  # fmt: skip
        try:
            out = subprocess.run(
                ["redis-benchmark", "-p", str(redis.port), "-t", "set", "-n", "20000",
                 "-c", str(clients), "-q"], capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
        finally:
            redis.stop()
    found = re.findall(r"([\d.]+) requests per second", out)
    return float(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    ensure_tools()
    rounds: dict[str, list[dict[str, float]]] = {policy: [] for policy in POLICIES}
    for number in range(args.rounds):
        for policy in POLICIES:
            with (
                tempfile.TemporaryDirectory() as tmp,
                web_stack(Path(tmp), ("--appendfsync", policy)) as base,
            ):
                target = Target("bulkhook", base + "/callbacks/bulk", b64_signer)
                wrk(target, "bulk", args.concurrency, 1, Path(tmp))  # warm up
                measured = wrk(target, "bulk", args.concurrency, args.seconds, Path(tmp))
                figures = {"per_second": measured["accepted_per_s"],
                           "p50_ms": measured["p50_ms"], "p99_ms": measured["p99_ms"]}  # fmt: skip
            rounds[policy].append(figures)
            print(f"round {number + 1} {policy:>8}: {figures['per_second']:7.0f} accepted/s, "
                  f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms")  # fmt: skip

    raw = {
        f"{policy} c={clients}": raw_redis(policy, clients)
        for clients in (1, args.concurrency)
        for policy in POLICIES
    }
    summary = {
        policy: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for policy, results in rounds.items()
    }
    ratio = statistics.median(
        a["per_second"] / e["per_second"]
        for a, e in zip(rounds["always"], rounds["everysec"], strict=True)
    )
    print(f"\n{'appendfsync':<12}{'accepted/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for policy, figures in summary.items():
        print(f"{policy:<12}{figures['per_second']:>12.0f}{figures['p50_ms']:>9.1f}"
              f"{figures['p99_ms']:>9.1f}")  # fmt: skip
    print(f"always/everysec throughput, median of per-round ratios: {ratio:.2f}")
    print("\nRedis alone (redis-benchmark SET, 20,000 requests):")
    for name, value in raw.items():
        print(f"  {name:<16}{value:>10.0f} SET/s" if value else f"  {name:<16} n/a")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rounds": rounds, "median": summary, "ratio": ratio,
                                        "redis_alone": raw,
                                        "seconds": args.seconds,
                                        "concurrency": args.concurrency},
                                       indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
