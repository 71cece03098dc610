"""What a caller may send: body size and type, the rate limit per key, the backlog cap."""

from __future__ import annotations

import io
import json

import pytest

from tests.api import API_KEYS, KEY_A, KEY_B, PLAIN, SUBMIT, Api, assert_problem
from tests.helpers import fresh_window, queued, records


def retry_after(resp) -> int:
    """The Retry-After header of a refusal, in whole seconds (it must be there)."""
    value = resp.headers.get("Retry-After", "")
    assert value.isdigit(), f"Retry-After is {value!r}"
    return int(value)


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
    web1, web2 = Api(build(**env).test_client()), Api(build(**env).test_client())
    fresh_window(60)
    # Two web processes share the count through Redis.
    assert web1.submit("rl-1", key=KEY_A).status_code == 202
    assert web2.submit("rl-2", key=KEY_A).status_code == 202
    assert web1.submit("rl-3", key=KEY_A).status_code == 202
    limited = web2.submit("rl-4", key=KEY_A)
    body = assert_problem(limited, 429)
    assert body["request_id"] == "rl-4"
    assert 1 <= retry_after(limited) <= 60
    assert_problem(web1.status("rl-1", key=KEY_A), 429)
    assert web1.submit("rl-b1", key=KEY_B).status_code == 202
    assert len(records(redis)) == 4
    assert queued(redis, settings) == 4


def test_without_rate_limit_there_is_none(client, redis) -> None:
    """RATE_LIMIT unset: many requests in a row all pass."""
    for n in range(30):
        assert client.get(f"/api/v1/i2v/none-{n}").status_code == 404


def test_backlog_cap_refuses_submits_with_503(build, redis, settings) -> None:
    """MAX_QUEUED=2: the 3rd submit is a 503 problem with Retry-After and enqueues nothing; reads and repeats work."""
    api = Api(build(MAX_QUEUED="2").test_client())
    assert api.submit("q-1").status_code == 202
    assert api.submit("q-2").status_code == 202
    refused = api.submit("q-3")
    body = assert_problem(refused, 503)
    assert body["request_id"] == "q-3"
    assert retry_after(refused) >= 1
    assert len(records(redis)) == 2
    assert queued(redis, settings) == 2
    assert api.status("q-3").status_code == 404
    assert api.status("q-1").status_code == 200
    assert api.submit("q-1").status_code == 200  # a repeat is answered, the backlog notwithstanding
    assert queued(redis, settings) == 2
