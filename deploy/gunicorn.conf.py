"""Gunicorn settings for bulkhook; the Procfile's `web:` line and `bulkhook run` use this file.

Every value can be overridden from the environment, 12-factor style.
"""

import multiprocessing
import os

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

# Gunicorn's control socket is a per-user path: two servers on one host would fight over it.
control_socket_disable = True
