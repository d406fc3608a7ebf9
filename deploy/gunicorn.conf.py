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

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

# Threads let one worker keep serving while another request waits on Redis; the Redis
# client is thread-safe and each process builds its own after the fork (no preload).
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() + 1))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# Callbacks are answered after verify + record + enqueue, within a few seconds even when
# Redis hangs (its socket timeout), so 30 s only ever stops a stuck worker.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# gunicorn's error and access lines and the app's, in BULKHOOK_LOG_FORMAT (json or text).
logconfig_dict = logs.gunicorn_config(loglevel.upper())
# No access line for a callback: the app writes one with its ids (service/logs.py says why).
logger_class = "service.logs.GunicornLogger"
# Text mode: no query string (it carries per-job callback tokens).
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(D)sus "%(a)s"'


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
