"""The floor: the obvious receiver, kept as the baseline bulkhook must beat.

A Flask view that verifies the signature, then calls `queue.enqueue(...)`; gunicorn runs it
with 4 sync workers. No de-duplication, no records: just verify and enqueue.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from redis import Redis
from rq import Queue

from service.signature import verify


def process(body: str) -> None:
    """The follow-up task: nothing, as in the bench's other implementations."""


def create_app() -> Flask:
    app = Flask(__name__)
    queue = Queue("floor", connection=Redis.from_url(os.environ["REDIS_URL"]))
    key = os.environ["BULKHOOK_SIGNATURE_KEY"]

    @app.post("/callbacks/bulk")
    def receive():
        body = request.get_data()
        try:
            verify(request.headers.get("Elements-Webhook-Signature"), body, [key])
        except Exception:
            return jsonify({"status": "unauthorized"}), 401
        job = queue.enqueue(process, body.decode())
        return jsonify({"status": "accepted", "delivery_id": job.id}), 202

    return app
