"""The ingest baseline: a bare Flask app with one POST route that answers a small JSON 202.

It is served by the Procfile's own ``web`` command with ``wsgi:app`` swapped for
``bench.bare_app:app``, so gunicorn's settings (workers, threads, access log, keep-alive) are the
same for the baseline and the service.
"""

from flask import Flask, request

app = Flask(__name__)


@app.post("/api/v1/i2v")
def submit() -> tuple[dict[str, str], int]:
    """Accept anything, do nothing."""
    return {"message": "accepted", "request_id": request.headers.get("x-request-id", "")}, 202
