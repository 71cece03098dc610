"""API keys on /api/*: who may call, what another key may see or take, and the spec's bearer scheme."""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest
from rq import Queue

from jobs.identity import TARGET_PREFIX
from tests.api import API_KEYS, KEY_A, KEY_B, KEY_C, KEY_D, OTHER, PLAIN, Api, assert_problem
from tests.helpers import Build, queued, records

CHALLENGE = 'Bearer realm="i2v"'
PUBLIC_PATHS = ["/", "/docs", "/redoc", "/openapi.json", "/healthz", "/docs/assets/swagger-ui-bundle.js"]


@pytest.fixture
def secured(build: Build) -> Api:
    """The API of an app that requires API keys A, B, C and D."""
    return Api(build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS).test_client())


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
        secured.submit("auth-1", headers=headers),
        secured.status("auth-1", headers=headers),
        secured.cancel("auth-1", headers=headers),
        secured.redeliver("auth-1", headers=headers),
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
    resp = secured.submit("ok-1", headers={"Authorization": authorization})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert "WWW-Authenticate" not in resp.headers
    assert secured.status("ok-1", headers={"Authorization": authorization}).status_code == 200
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
    resp = secured.client.get("/readyz")
    assert resp.status_code != 401
    assert "WWW-Authenticate" not in resp.headers


def test_without_keys_the_api_refuses_with_503(build, redis, settings, caplog) -> None:
    """No I2V_API_KEYS and auth not disabled: /api/v1 answers 503 problems and says why in the log."""
    with caplog.at_level(logging.WARNING):
        api = Api(build(I2V_AUTH_DISABLED="0", I2V_API_KEYS="").test_client())
    assert any("I2V_API_KEYS" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for resp in (api.submit("nokeys", key=KEY_A), api.status("nokeys"), api.cancel("nokeys")):
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
    assert secured.submit("mine", key=KEY_A).status_code == 202
    for resp in (
        secured.status("mine", key=KEY_B),
        secured.cancel("mine", key=KEY_B),
        secured.redeliver("mine", key=KEY_B),
        secured.status("mine", key=KEY_C),
    ):
        assert_problem(resp, 404)
    mine = secured.status("mine", key=KEY_A)
    assert mine.status_code == 200
    assert mine.get_json()["status"] == "queued"
    assert queued(redis, settings) == 1


def test_the_same_request_id_under_two_keys_at_two_callback_urls_is_two_requests(build, redis, settings) -> None:
    """One x-request-id under two keys, called back at two URLs: two 202s, two records, two jobs."""
    api = Api(
        build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS, CALLBACK_URL_ALLOWLIST="hooks.example.com").test_client()
    )
    assert api.submit("shared", PLAIN, key=KEY_A).status_code == 202
    resp = api.submit("shared", OTHER, key=KEY_B, callback_url="https://hooks.example.com/cb")
    assert resp.status_code == 202, resp.get_json()
    assert len(records(redis)) == 2
    queue = Queue(settings.queue_name, connection=redis)
    assert len(set(queue.job_ids)) == 2
    assert api.status("shared", key=KEY_A).get_json()["image_url"] == PLAIN
    assert api.status("shared", key=KEY_B).get_json()["image_url"] == OTHER


def test_a_request_id_at_a_callback_url_belongs_to_one_key(build, redis, settings) -> None:
    """Key B cannot take key A's id at A's callback URL (409, revealing nothing else) until A's record is gone."""
    api = Api(build(I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEYS, CALLBACK_URL_ALLOWLIST="127.0.0.1").test_client())
    assert api.submit("game-42", PLAIN, key=KEY_A).status_code == 202
    same_url = settings.callback_api_url + "/game-42/callback"
    for resp in (
        api.submit("game-42", OTHER, key=KEY_B),
        api.submit("game-42", PLAIN, key=KEY_C),
        api.submit("game-42", OTHER, key=KEY_B, callback_url=same_url),
    ):
        problem = assert_problem(resp, 409)
        assert problem["detail"] == "Request id 'game-42' is already in use at this callback URL"
    assert len(records(redis)) == 1
    assert queued(redis, settings) == 1
    assert_problem(api.cancel("game-42", key=KEY_B), 404)
    assert api.submit("game-42", PLAIN, key=KEY_A).status_code == 200
    claims = redis.keys(TARGET_PREFIX + "*")
    assert len(claims) == 1
    assert 0 < redis.ttl(claims[0]) <= settings.record_ttl
    # The claim lives as long as the record: once A's record is gone, the id is free at that URL.
    redis.delete(*records(redis))
    assert api.submit("game-42", OTHER, key=KEY_B).status_code == 202
