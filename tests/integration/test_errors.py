"""One error shape: every error is an RFC 9457 problem that echoes only a well-formed request id."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest

from tests.api import API_KEYS, OTHER, PLAIN, SUBMIT, Api, assert_problem
from tests.helpers import Build, fresh_window, with_failing_view

# Each error_* function provokes one error status, sending ``rid`` (the x-request-id under test).


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
    assert Api(client).submit("first").status_code == 202
    return client.post(SUBMIT, json={"image_id": PLAIN}, headers=rid)


def error_503_no_keys(build: Build, rid: dict[str, str]):
    client = build(I2V_AUTH_DISABLED="0", I2V_API_KEYS="").test_client()
    return client.post(SUBMIT, json={"image_id": PLAIN}, headers=rid)


def error_500(build: Build, rid: dict[str, str]):
    return with_failing_view(build()).test_client().get("/boom", headers=rid)


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
    client = with_failing_view(build()).test_client()
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
