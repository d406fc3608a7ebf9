# bulkhook: one image for the web and the worker (see compose.yaml, deploy/kubernetes/).
# Build: docker build -t bulkhook .   Web (default): docker run -p 8000:8000 --env-file ...
# Worker: docker run bulkhook bulkhook worker
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim-bookworm
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    BULKHOOK_WORK_DIR=/app/var/work \
    BULKHOOK_OUTBOX_DIR=/app/var/outbox
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home bulkhook
WORKDIR /app
COPY --from=build /venv /venv
COPY deploy/gunicorn.conf.py deploy/gunicorn.conf.py
RUN mkdir -p var/work var/outbox && chown -R 10001:10001 var
USER 10001:10001
EXPOSE 8000
# No curl in a slim image: the probe is Python's own urllib. Liveness only (no Redis call).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz', timeout=2)"]
# The Procfile's web line; SIGTERM is gunicorn's graceful stop.
CMD ["gunicorn", "--config", "deploy/gunicorn.conf.py", "service.asgi:create_asgi_app()"]
