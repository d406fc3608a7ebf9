"""A results file of a few hundred MB goes to disk while the worker's memory stays flat."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from redis import Redis

from service import jobs
from service.connection import task_queue
from service.openconnectors import Client

from .processes import SimulatorProcess, environment, wait_for

pytestmark = pytest.mark.slow

RECORDS = 1_500_000
"""About 200 MB of JSON lines from the simulator's generated contacts."""

# Runs the real `bulkhook worker --burst` and reports the largest resident set of it and of
# the work horse it forks, which the kernel folds into RUSAGE_CHILDREN.
MEASURE = """
import resource, subprocess, sys
subprocess.run(["bulkhook", "worker", "--burst"], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_kib(env: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_large_results_stream_to_disk_with_flat_worker_memory(tmp_path, redis_url) -> None:
    simulator = SimulatorProcess(tmp_path, "big-key")
    try:
        simulator.switch(step_seconds=0.05, synthetic_records=RECORDS)
        client = Client(simulator.url, simulator.TOKEN, simulator.SECRET)
        job_id = str(client.download("contacts", file_format="jsonl")["id"])
        wait_for(lambda: client.status(job_id).terminal, what="the download job to finish")
        conn = Redis.from_url(redis_url)
        jobs.record_started(conn, job_id, object_name="contacts", direction=jobs.DOWNLOAD,
                            callback=None, token=None)  # fmt: skip
        env = environment(
            REDIS_URL=redis_url,
            BULKHOOK_WORK_DIR=str(tmp_path / "work"),
            BULKHOOK_HANDLERS="log",
            **{k: v for k, v in simulator.settings().items()},
        )

        idle_peak = peak_rss_kib(env)  # the same worker with nothing to do
        task_queue(conn).enqueue("service.tasks.check_job", job_id, 99, job_id="big")
        busy_peak = peak_rss_kib(env)
    finally:
        simulator.close()

    results = tmp_path / "work" / job_id / "records.jsonl"
    size = results.stat().st_size
    assert size > 150 * 1024 * 1024
    with open(results, "rb") as handle:
        handle.seek(size - 300)
        last = json.loads(handle.read().splitlines()[-1])
    assert last["id"] == RECORDS - 1
    assert jobs.get(conn, job_id)["state"] == jobs.DONE
    growth_mib = (busy_peak - idle_peak) / 1024
    print(f"results {size / 2**20:.0f} MiB; worker peak {idle_peak / 1024:.0f} MiB idle, "
          f"{busy_peak / 1024:.0f} MiB while downloading (+{growth_mib:.1f} MiB)")  # fmt: skip
    assert growth_mib < 32, f"worker memory grew by {growth_mib:.0f} MiB"
