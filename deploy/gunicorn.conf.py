"""Gunicorn settings for bulkhook; the Procfile's `web:` line and `bulkhook run` use this file.

Every value can be overridden from the environment, 12-factor style.
"""

import ctypes
import ctypes.util
import multiprocessing
import os
import shutil
import tempfile

# Prometheus multiprocess mode: each worker process writes its counters to files in this
# folder and /metrics adds them up. Set before anything imports prometheus_client (importing
# `service` below does), so that every process, master included, is in that mode; emptied at
# start so a restart does not count old figures twice.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bulkhook-metrics-")

from service import logs  # noqa: E402 - after the variable above, on purpose
from service.asgi import WORKER_CLASS  # noqa: E402

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

# uvicorn's worker: HTTP parsed in C (httptools) and an event loop (uvloop) per process; the
# callback paths await Redis, so one process takes many callbacks at once (service/asgi.py).
# Under the threaded worker (gthread, 3 x 4) a callback cost the web about 700 us of CPU
# on 2 cores; here 190-340 (docs/performance.md). Each process builds its own Redis
# clients after the fork (no preload). The worker class keeps gunicorn's limit_request_* settings
# and answers a sender silent for `timeout` mid-request with 408 (service/web_worker.py).
worker_class = WORKER_CLASS
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() + 1))
# uvicorn would take the client address and scheme from X-Forwarded-* sent by 127.0.0.1;
# BULKHOOK_TRUSTED_PROXIES decides that instead, for every path.
forwarded_allow_ips = ""

# Callbacks are answered after verify + record + enqueue, within a few seconds even when
# Redis hangs (its socket timeout), so 30 s only ever stops a stuck worker.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# gunicorn's error and access lines and the app's, in BULKHOOK_LOG_FORMAT (json or text).
# uvicorn's access lines go to gunicorn's access handlers: no query string (service/logs.py,
# AccessLines), and none for a callback the app logs itself (service/web_worker.py).
logconfig_dict = logs.gunicorn_config(loglevel.upper())


def on_starting(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_ALLOCATION_BYTES = 1024 * 1024


def post_fork(server, worker):
    # Each allocation of 1 MiB or more (a large body, its text, its parsed document) gets its
    # own mapping, returned to the system when freed. glibc's default raises that threshold
    # after the first large free and serves the next from its heap, which it keeps. Measured
    # with 10 MiB bodies, three in a row per worker: peaks of 2.06-2.57 bodies per request
    # and up to 20 MiB kept after one; with this, 2.00-2.03 and at most 1.2 MiB kept.
    # Not glibc (musl): nothing to do.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES)
    except (OSError, AttributeError):
        pass


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


# Gunicorn's control socket is a per-user path: two servers on one host would fight over it.
control_socket_disable = True
