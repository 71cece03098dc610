"""Secrets never leak: provider tokens, the GAME key, the signing secret and callers' keys."""

from __future__ import annotations

import base64
import hashlib
import logging

from jobs.identity import KEY_PREFIX
from tests.api import OTHER, PLAIN, SUBMIT, bearer
from tests.helpers import with_failing_view

REPLICATE_CANARY = "r8_CANARY_replicate_7b1f0e9d"
PIKA_CANARY = "pika_CANARY_bearer_4c2a8e6f"
GAME_CANARY = "game_CANARY_apikey_9d3b5f1a"
SIGNING_KEY = b"CANARY-signing-key-0123456789abcdef"
SIGNING_CANARY = "whsec_" + base64.b64encode(SIGNING_KEY).decode()
API_CANARY_A = "ak_CANARY_caller_one_1e2d3c"
API_CANARY_B = "ak_CANARY_caller_two_5f6e7d"
WRONG_CANARY = "ak_CANARY_wrong_guess_8a9b0c"
SECRETS = [
    REPLICATE_CANARY,
    PIKA_CANARY,
    GAME_CANARY,
    SIGNING_CANARY,
    SIGNING_CANARY.removeprefix("whsec_"),
    SIGNING_KEY.decode(),
    API_CANARY_A,
    API_CANARY_B,
    WRONG_CANARY,
    "CANARY",
]


def test_secrets_never_leak_into_responses_records_or_logs(build, redis, caplog) -> None:
    """Provider tokens, the GAME key, the signing secret and callers' keys appear in no body, header, record or log."""
    caplog.set_level(logging.DEBUG)
    app = with_failing_view(
        build(
            REPLICATE_API_TOKEN=REPLICATE_CANARY,
            PIKAPI_BEARER_TOKEN=PIKA_CANARY,
            GAME_API_KEY=GAME_CANARY,
            CALLBACK_SIGNING_SECRET=SIGNING_CANARY,
            I2V_AUTH_DISABLED="0",
            I2V_API_KEYS=f"{API_CANARY_A},sha256:{hashlib.sha256(API_CANARY_B.encode()).hexdigest()}",
            LOG_LEVEL="DEBUG",
            RATE_LIMIT="100/minute",
        )
    )
    client = app.test_client()
    a, b, wrong = bearer(API_CANARY_A), bearer(API_CANARY_B), bearer(WRONG_CANARY)
    responses = [
        client.post(SUBMIT, json={"image_id": PLAIN}, headers={"x-request-id": "s-1", **a}),
        client.post(SUBMIT, json={"image_id": PLAIN}, headers={"x-request-id": "s-1", **a}),
        client.post(SUBMIT, json={"image_id": OTHER}, headers={"x-request-id": "s-1", **a}),
        client.post(SUBMIT, json={"image_id": PLAIN}, headers={"x-request-id": "s-2", **b}),
        client.get("/api/v1/i2v/s-1", headers=a),
        client.get("/api/v1/i2v/s-2", headers=b),
        client.get("/api/v1/i2v/s-1", headers=b),
        client.post("/api/v1/i2v/s-1/callback", headers=a),
        client.post(SUBMIT, json={"image_id": PLAIN}, headers={"x-request-id": "s-3", **wrong}),
        client.get("/api/v1/i2v/s-1", headers={"Authorization": f"Token {API_CANARY_A}"}),
        client.post(SUBMIT, json={"image_id": "http://127.0.0.1/"}, headers={"x-request-id": "s-4", **a}),
        client.post(
            SUBMIT,
            json={"image_id": PLAIN, "callback_url": "https://x.example/cb"},
            headers={"x-request-id": "s-5", **a},
        ),
        client.post(SUBMIT, data="{bad", content_type="application/json", headers={"x-request-id": "s-6", **a}),
        client.post(SUBMIT, data="x", content_type="text/plain", headers={"x-request-id": "s-7", **a}),
        client.put(SUBMIT, headers=a),
        client.get("/boom", headers=a),
        client.delete("/api/v1/i2v/s-2", headers=b),
        client.get("/"),
        client.get("/docs"),
        client.get("/redoc"),
        client.get("/openapi.json"),
        client.get("/healthz"),
        client.get("/readyz"),
    ]
    assert [r.status_code for r in responses[:4]] == [202, 200, 409, 202]
    assert responses[8].status_code == 401
    assert any(r.levelno >= logging.ERROR for r in caplog.records)  # the log is really being captured
    seen = [r.get_data(as_text=True) + "\n" + str(r.headers) for r in responses]
    for key in redis.keys(KEY_PREFIX + "*"):
        seen.append(repr(redis.hgetall(key)))
    seen.append(caplog.text)
    seen += [repr(vars(record)) for record in caplog.records]
    for text in seen:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked: {text[:500]}"
