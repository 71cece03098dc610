"""Property-based fuzzing of the API against its own OpenAPI spec: no server errors, replies as documented.

The spec is loaded from the app under test (the ``app`` fixture, on the test Redis), and each
operation's cases come from its Hypothesis strategy, valid and (where there is input) invalid.
"""

from __future__ import annotations

import pytest
from schemathesis.specs.openapi.checks import content_type_conformance, ignored_auth

from config import settings_from
from i2v_app import create_app
from tests.fuzzing import CHECKS, INVALID, VALID, fuzz, load

API_KEY = "ak_fuzz_6e1d2c3b4a59"
#: Every operation of the spec, with the kinds of input it can be fuzzed with (no input: nothing to make invalid).
OPERATIONS = {
    ("POST", "/api/v1/i2v"): (VALID, INVALID),
    ("GET", "/api/v1/i2v"): (VALID, INVALID),
    ("POST", "/api/v1/uploads"): (VALID, INVALID),
    ("GET", "/api/v1/i2v/{request_id}"): (VALID, INVALID),
    ("DELETE", "/api/v1/i2v/{request_id}"): (VALID, INVALID),
    ("POST", "/api/v1/i2v/{request_id}/callback"): (VALID, INVALID),
    ("GET", "/"): (VALID,),
    ("GET", "/healthz"): (VALID,),
    ("GET", "/readyz"): (VALID,),
}
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for (method, path), modes in OPERATIONS.items()
    for mode in modes
]


def authenticated(ctx, response, case) -> bool | None:
    """A request that carried the valid key is never refused for want of one.

    Invalid-input generation also drops or spoils the credentials on purpose; a 401 is right then.
    """
    sent = {name.lower(): value for name, value in response.request.headers.items()}
    if sent.get("authorization") == f"Bearer {API_KEY}":
        assert response.status_code != 401, "the valid API key was refused"
    return None


def test_every_operation_of_the_spec_is_fuzzed(app) -> None:
    """The operations fuzzed here are exactly the spec's operations."""
    spec = app.test_client().get("/openapi.json").get_json()
    declared = {(m.upper(), path) for path, item in spec["paths"].items() for m in item if m != "parameters"}
    assert declared == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_conforms_without_auth(app, redis, method, path, mode) -> None:
    """Generated requests get no 5xx; codes, bodies and error shapes are as documented."""
    fuzz(load(app, path)[path][method], mode, redis, CHECKS)


@pytest.fixture
def secured_submit(service_env: dict[str, str]):
    """POST /api/v1/i2v of an app that requires an API key."""
    app = create_app(settings_from({**service_env, "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": API_KEY}))
    app.config["TESTING"] = True
    return load(app, "/api/v1/i2v")["/api/v1/i2v"]["POST"]


@pytest.mark.parametrize("mode", [VALID, INVALID], ids=lambda mode: mode.value)
def test_submit_conforms_with_a_valid_key(secured_submit, redis, mode) -> None:
    """Generated submissions carrying a valid API key get no 5xx and documented replies."""
    fuzz(secured_submit, mode, redis, [*CHECKS, authenticated], headers={"Authorization": f"Bearer {API_KEY}"})


def test_submit_enforces_the_key(secured_submit, redis) -> None:
    """Accepted submissions replayed without the key, or with a wrong one, are refused."""
    seen = fuzz(
        secured_submit,
        VALID,
        redis,
        [*CHECKS, authenticated, ignored_auth],
        headers={"Authorization": f"Bearer {API_KEY}"},
        body={"image_id": "https://cdn.example.com/images/plane.jpg"},
    )
    assert 202 in seen, seen


def test_error_media_type_is_documented(app, redis) -> None:
    """Error replies of the submit operation use a media type the spec declares."""
    fuzz(load(app, "/api/v1/i2v")["/api/v1/i2v"]["POST"], INVALID, redis, [content_type_conformance])
