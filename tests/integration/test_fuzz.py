"""Property-based fuzzing of the API against its own OpenAPI spec: no server errors, replies as documented.

The spec is loaded from the app under test (the ``app`` fixture, on the test Redis), and each
operation's cases come from its Hypothesis strategy, valid and (where there is input) invalid.
"""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from config import settings_from
from i2v_app import create_app

API_KEY = "ak_fuzz_6e1d2c3b4a59"
#: Bounded and repeatable: the same examples on every run, nothing stored between runs.
BOUNDED = hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
VALID = GenerationMode.POSITIVE
INVALID = GenerationMode.NEGATIVE
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
#: /readyz documents 503 as its "not ready" answer (no worker runs in these tests): expected, not a server error.
DOCUMENTED_503 = {"/readyz"}
PROBLEM_MIMETYPE = "application/problem+json"


def problem_shape(ctx, response, case) -> bool | None:
    """Every error reply is problem+json matching the spec's Problem schema.

    The built-in schema check cannot do this: the spec documents error bodies under
    application/json, so it finds no schema for the problem+json replies and skips them.
    """
    if response.status_code < 400:
        return None
    if response.status_code == 503 and case.operation.path in DOCUMENTED_503:
        return None  # a readiness report, documented with its own schema (checked by the schema check)
    content_type = next((values[0] for name, values in response.headers.items() if name.lower() == "content-type"), "")
    media_type = content_type.split(";")[0].strip()
    assert media_type == PROBLEM_MIMETYPE, f"{response.status_code} reply is {media_type!r}"
    spec = case.operation.schema.raw_schema
    problem = spec["components"]["schemas"]["Problem"]
    body = json.loads(response.content)
    errors = [e.message for e in jsonschema_rs.validator_for(problem).iter_errors(body)]
    assert not errors, f"{response.status_code} problem {body} breaks the Problem schema: {errors}"
    assert body["status"] == response.status_code
    assert {"type", "title", "status", "detail"} <= set(body)
    return None


CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, problem_shape]


def load(app: Flask, path: str):
    """The app's spec, read from the app itself; unhandled exceptions answer 500 as in production."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    config = None
    if path in DOCUMENTED_503:
        expected = ["2xx", "3xx", "4xx", "503"]
        config = schemathesis.Config.from_dict({"checks": {"not_a_server_error": {"expected-statuses": expected}}})
    return schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)


def fuzz(operation, mode: GenerationMode, redis, checks, headers=None, **fixed) -> list[int]:
    """Run bounded generated cases of one operation through ``checks``, on an empty Redis each time.

    Returns:
        The status codes seen.
    """
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @BOUNDED
    def run(case) -> None:
        redis.flushdb()
        seen.append(case.call_and_validate(checks=checks, headers=headers).status_code)

    run()
    return seen


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
