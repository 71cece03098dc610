"""How the submit endpoint reads accepted bodies: what it stores for each form a caller may send."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from redis import Redis

from config import settings_from
from i2v_app import create_app
from jobs.identity import RequestIdentity

IMAGE = "https://cdn.example.com/a.jpg"


def stored(redis: Redis, request_id: str) -> dict[str, str]:
    """The image and callback URLs recorded for ``request_id`` (no owner: authentication is off)."""
    record = redis.hgetall(RequestIdentity("", request_id).record_key)
    return {key: record.get(key.encode(), b"").decode() for key in ("image_url", "callback_url")}


def allowlisted_app(service_env: dict[str, str]) -> Flask:
    """The app with an internal image host and an internal callback host allowed."""
    env = {**service_env, "IMAGE_HOST_ALLOWLIST": "images.internal", "CALLBACK_URL_ALLOWLIST": "cb.internal"}
    return create_app(settings_from(env))


@pytest.mark.parametrize(
    ("body", "image_url"),
    [
        ({"image_id": IMAGE}, IMAGE),
        ({"image_id": f"  {IMAGE}  "}, IMAGE),
        (
            {"image_id": "https:&#x2F;&#x2F;cdn.example.com&#x2F;a.jpg?x&#x3D;1&amp;y&#x3D;2"},
            "https://cdn.example.com/a.jpg?x=1&y=2",
        ),
        ({"image_id": IMAGE, "callback_url": None}, IMAGE),
        ({"image_id": IMAGE, "unknown": {"nested": [1, 2]}}, IMAGE),
    ],
    ids=["plain", "spaces", "html-escaped", "null-callback", "unknown-field"],
)
def test_an_accepted_body_stores_the_url_the_schema_reads(client, redis, body: dict[str, Any], image_url: str) -> None:
    """Spaces around a URL are dropped, HTML escapes undone, unknown fields and a null callback ignored."""
    resp = client.post("/api/v1/i2v", json=body, headers={"x-request-id": "read-1"})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert stored(redis, "read-1") == {"image_url": image_url, "callback_url": ""}


def test_allowlisted_hosts_are_accepted_for_the_image_and_the_callback(service_env, redis) -> None:
    """IMAGE_HOST_ALLOWLIST lets an internal image host in; CALLBACK_URL_ALLOWLIST an internal callback host."""
    client = allowlisted_app(service_env).test_client()
    body = {"image_id": "http://images.internal/a.png", "callback_url": " https://cb.internal/hook "}
    resp = client.post("/api/v1/i2v", json=body, headers={"x-request-id": "read-2"})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert stored(redis, "read-2") == {
        "image_url": "http://images.internal/a.png",
        "callback_url": "https://cb.internal/hook",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image_id": "http://images.internal/a.png"}, "image_id"),
        ({"image_id": IMAGE, "callback_url": 7}, "callback_url"),
        ({"image_id": [IMAGE]}, "image_id"),
    ],
    ids=["image-host-not-allowed", "callback-number", "image-list"],
)
def test_a_refused_body_names_its_field_and_stores_nothing(client, redis, body: dict[str, Any], field: str) -> None:
    """Without the allowlist an internal host is refused; a field of the wrong type is too."""
    resp = client.post("/api/v1/i2v", json=body, headers={"x-request-id": "read-3"})
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"
    assert list(resp.get_json()["errors"]) == [field]
    assert resp.get_json()["detail"].startswith(f"{field}: ")
    assert redis.keys("i2v:req:*") == []


def test_the_spec_documents_the_submission_as_it_is_read(client) -> None:
    """The header and body schemas that read a submission are the ones the spec shows, with every answer."""
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/api/v1/i2v"]["post"]
    [header] = operation["parameters"]
    assert (header["in"], header["name"], header["required"]) == ("header", "x-request-id", True)
    assert header["schema"]["maxLength"] == 128
    assert operation["requestBody"] == {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submit"}}},
    }
    assert set(spec["components"]["schemas"]["Submit"]["properties"]) == {"image_id", "callback_url"}
    reply = {"application/json": {"schema": {"$ref": "#/components/schemas/SubmitReply"}}}
    assert operation["responses"]["202"]["content"] == operation["responses"]["200"]["content"] == reply
    errors = {
        code: answer["$ref"].rsplit("/", 1)[1] for code, answer in operation["responses"].items() if "$ref" in answer
    }
    assert errors == {
        "400": "BAD_REQUEST",
        "401": "UNAUTHORIZED",
        "409": "CONFLICT",
        "413": "REQUEST_ENTITY_TOO_LARGE",
        "415": "UNSUPPORTED_MEDIA_TYPE",
        "422": "UNPROCESSABLE_ENTITY",
        "429": "TOO_MANY_REQUESTS",
        "503": "SERVICE_UNAVAILABLE",
        "default": "DEFAULT_ERROR",
    }
    assert operation["security"] == [{"bearerAuth": []}]
