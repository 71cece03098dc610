"""RATE_LIMIT on a real Redis: which requests count, the shared count without authentication, the 429."""

from __future__ import annotations

from flask.testing import FlaskClient
from redis import Redis

from config import settings_from
from i2v_app import create_app

IMAGE = "https://cdn.example.com/a.jpg"


def limited_client(service_env: dict[str, str], rate: str) -> FlaskClient:
    """A test client of an app with ``RATE_LIMIT=rate`` (authentication off, as in service_env)."""
    return create_app(settings_from({**service_env, "RATE_LIMIT": rate})).test_client()


def test_every_api_request_counts_and_nothing_else_does(service_env, redis: Redis) -> None:
    """Routed and unrouted /api/ requests count; other paths and refused bodies do not; one count without keys."""
    client = limited_client(service_env, "3/minute")
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
    refused = client.post("/api/v1/i2v", data="{}", content_type="text/plain", headers={"x-request-id": "r-0"})
    assert refused.status_code == 415
    assert client.get("/api/v1/nowhere").status_code == 404
    assert client.get("/api/v1/i2v/r-1").status_code == 404
    assert client.post("/api/v1/i2v", json={"image_id": IMAGE}, headers={"x-request-id": "r-1"}).status_code == 202
    # A second client is another caller: without API keys every caller shares the one count.
    limited = limited_client(service_env, "3/minute").get("/api/v1/i2v/r-1", headers={"x-request-id": "r-1"})
    assert limited.status_code == 429
    assert limited.mimetype == "application/problem+json"
    assert limited.get_json() == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "Rate limit of 3 requests per 60 s exceeded for this API key.",
        "request_id": "r-1",
    }
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert len(redis.keys("i2v:rl:*")) == 1
