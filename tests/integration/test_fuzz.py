"""Property-based fuzzing of the API against its own OpenAPI spec: no server errors, replies as documented.

The spec is loaded from the app under test (the ``app`` fixture, on the test Redis), and each
operation's cases come from its Hypothesis strategy, in valid and invalid flavours.
"""

from __future__ import annotations

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config import settings_from
from i2v_app import create_app

API_KEY = "ak_fuzz_6e1d2c3b4a59"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
#: Bounded and repeatable: the same examples on every run, nothing stored between runs.
BOUNDED = hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
OPERATIONS = [
    ("POST", "/api/v1/i2v"),
    ("GET", "/api/v1/i2v/{request_id}"),
    ("DELETE", "/api/v1/i2v/{request_id}"),
    ("POST", "/api/v1/i2v/{request_id}/callback"),
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
MODES = [pytest.param(GenerationMode.POSITIVE, id="valid"), pytest.param(GenerationMode.NEGATIVE, id="invalid")]


def load(app: Flask):
    """The app's spec, read from the app itself; unhandled exceptions answer 500 as in production."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def fuzz(operation, mode: GenerationMode, redis, checks, headers: dict[str, str] | None = None) -> None:
    """Run bounded generated cases of one operation through ``checks`` on a fresh Redis each time."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @BOUNDED
    def run(case) -> None:
        redis.flushdb()
        case.call_and_validate(checks=checks, headers=headers)

    run()


def test_every_operation_of_the_spec_is_fuzzed(app) -> None:
    """The list fuzzed below is exactly the spec's operations."""
    spec = app.test_client().get("/openapi.json").get_json()
    declared = {
        (method.upper(), path) for path, item in spec["paths"].items() for method in item if method != "parameters"
    }
    assert declared == set(OPERATIONS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_conforms_without_auth(app, redis, method, path, mode) -> None:
    """Generated requests get no 5xx, and replies match the documented codes and schemas."""
    fuzz(load(app)[path][method], mode, redis, CHECKS)


@pytest.mark.parametrize("mode", MODES)
def test_submit_conforms_with_a_valid_key(service_env, redis, mode) -> None:
    """Generated submissions carrying a valid API key get no 5xx and documented replies."""
    app = create_app(settings_from({**service_env, "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": API_KEY}))
    app.config["TESTING"] = True
    fuzz(load(app)["/api/v1/i2v"]["POST"], mode, redis, CHECKS, headers={"Authorization": f"Bearer {API_KEY}"})


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_reply_media_types_are_documented(app, redis, method, path) -> None:
    """Every reply's media type is one the spec declares for its status."""
    fuzz(load(app)[path][method], GenerationMode.NEGATIVE, redis, [content_type_conformance])
