"""Callback URL forms, payloads and Standard Webhooks signatures."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from config import settings_from
from jobs.delivery import callback_payload, delivery_target, sign
from jobs.store import Record, callback_url
from tests.helpers import completed_callback

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3Q="


@pytest.mark.parametrize(
    ("setting", "request_id", "url"),
    [
        ("https://game-api.virtuals.io/requests", "abc", "https://game-api.virtuals.io/requests/abc/callback"),
        ("https://game-api.virtuals.io/requests/", "abc", "https://game-api.virtuals.io/requests/abc/callback"),
        ("https://h/requests", "game:42.1", "https://h/requests/game%3A42.1/callback"),
        ("https://h/hooks/{request_id}?v=1", "a~b", "https://h/hooks/a~b?v=1"),
        ("https://h/r/{request_id}/done", "x/y", "https://h/r/x%2Fy/done"),
    ],
)
def test_callback_url_base_and_template_forms(setting: str, request_id: str, url: str) -> None:
    assert callback_url(setting, request_id) == url


@pytest.mark.parametrize("request_id", [".", "..", "...", ""])
def test_callback_url_refuses_ids_that_are_dot_segments(request_id: str) -> None:
    """``..`` would turn ``/requests/../callback`` into ``/callback`` on GAME's host."""
    with pytest.raises(ValueError, match="path segment"):
        callback_url("https://h/requests", request_id)
    with pytest.raises(ValueError, match="path segment"):
        callback_url("https://h/hooks/{request_id}", request_id)


def target(callback_api_url: str, record_url: str | None = None, **env: str) -> tuple[str, dict[str, str]]:
    """Where delivery sends a callback of request ``r-1``, and its headers."""
    settings = settings_from({"GAME_API_KEY": "k", "CALLBACK_API_URL": callback_api_url, **env})
    record = Record(request_id="r-1", image_url="u", status="failed", callback_url=record_url)
    return delivery_target(SimpleNamespace(settings=settings), record)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "record_url",
    [
        pytest.param("https://game.example/requests/other/callback", id="other-request-same-host"),
        pytest.param("https://game.example/callback", id="other-path-same-host"),
        pytest.param("https://game.example/requests/r-1/callback?x=1", id="same-path-with-query"),
        pytest.param("https://hooks.example/requests/r-1/callback", id="other-host"),
    ],
)
def test_the_game_key_goes_only_to_the_exact_callback_url(record_url: str) -> None:
    """A per-request URL gets no ``x-api-key``, even on GAME's host; the request's own URL does."""
    url, headers = target("https://game.example/requests", record_url)
    assert url == record_url
    assert "x-api-key" not in headers
    url, headers = target("https://game.example/requests")
    assert url == "https://game.example/requests/r-1/callback"
    assert headers["x-api-key"] == "k"


@pytest.mark.parametrize(
    ("callback_api_url", "env", "sent"),
    [
        pytest.param("http://game.example/requests", "development", True, id="dev-http"),
        pytest.param("http://127.0.0.1:9/requests", "production", True, id="prod-http-loopback-v4"),
        pytest.param("http://[::1]:9/requests", "production", True, id="prod-http-loopback-v6"),
        pytest.param("http://localhost:9/requests", "production", True, id="prod-http-localhost"),
        pytest.param("https://game.example/requests", "production", True, id="prod-https"),
    ],
)
def test_plain_http_carries_the_key_only_to_loopback_outside_development(callback_api_url, env, sent) -> None:
    _, headers = target(callback_api_url, I2V_ENV=env)
    assert ("x-api-key" in headers) is sent


def test_production_never_sends_the_key_over_plain_http_to_another_machine() -> None:
    """Settings that slipped past the start-up check still never put the key on plain http."""
    settings = settings_from({"GAME_API_KEY": "k", "CALLBACK_API_URL": "https://game.example/requests"})
    settings = dataclasses.replace(settings, callback_api_url="http://game.example/requests")
    record = Record(request_id="r-1", image_url="u", status="failed")
    url, headers = delivery_target(SimpleNamespace(settings=settings), record)  # type: ignore[arg-type]
    assert url == "http://game.example/requests/r-1/callback"
    assert "x-api-key" not in headers


def test_success_and_failure_payloads_match_the_contract() -> None:
    done = Record(
        request_id="r", image_url="u", status="completed", video_url="https://v/Plane_fly.mp4", title="Plane fly"
    )
    assert callback_payload(done) == completed_callback("https://v/Plane_fly.mp4")
    failed = Record(request_id="r", image_url="u", status="failed")
    assert callback_payload(failed) == {"data": {"addToInventory": False, "status": "FAILED", "output": None}}
    canceled = Record(request_id="r", image_url="u", status="canceled")
    assert callback_payload(canceled)["data"]["status"] == "FAILED"


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    body = json.dumps({"data": {"status": "FAILED"}}).encode()
    import time

    ts = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign((SECRET,), "msg_1", ts, body),
    }
    assert Webhook(SECRET).verify(body, headers) is not None
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)


def test_signatures_are_pinned_byte_for_byte() -> None:
    """The Standard Webhooks reference example, and two rotating secrets as the service has always signed them."""
    assert sign((SECRET,), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    body = b'{"data":{"addToInventory":false,"status":"FAILED","output":null}}'
    assert sign((SECRET, OTHER), "msg_0123456789abcdef0123456789abcdef01234567", 1764547200, body) == (
        "v1,qkIhaOq3SxAPiSBcMp7jX7TNuuMcRaa+ycFJJazeOK0= v1,jhRUDWGkXGckx267SamWDTK719+61siacFp4GUqgSuE="
    )


def test_rotation_signs_with_every_secret() -> None:
    import time

    body = b"{}"
    ts = int(time.time())
    signature = sign((OTHER, SECRET), "msg_2", ts, body)
    assert len(signature.split(" ")) == 2
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(ts), "webhook-signature": signature}
    for secret in (SECRET, OTHER):
        Webhook(secret).verify(body, headers)
