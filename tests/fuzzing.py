"""Fuzzing an operation of the API against the app's own OpenAPI spec: the generated cases and the checks.

Shared by the spec-wide fuzz tests and the tests of single operations (uploads), so every level fuzzes
with the same bounds and judges replies by the same checks.
"""

from __future__ import annotations

import json

import jsonschema_rs
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

#: Bounded and repeatable: the same examples on every run, nothing stored between runs.
BOUNDED = hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
VALID = GenerationMode.POSITIVE
INVALID = GenerationMode.NEGATIVE
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
