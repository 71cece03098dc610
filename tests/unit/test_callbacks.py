"""Callback URL forms, payloads and Standard Webhooks signatures."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobs.clients.game import callback_url, same_host
from jobs.delivery import callback_payload, sign
from jobs.store import Record
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


def test_same_host_compares_scheme_host_and_port() -> None:
    assert same_host("https://a.io/x", "https://A.io:443/y")
    assert not same_host("https://a.io/x", "https://a.io:8443/y")
    assert same_host("https://a.io/x", "https://a.io/y")
    assert not same_host("https://a.io/x", "https://b.io/x")
    assert not same_host("http://a.io/x", "https://a.io/x")


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


def test_rotation_signs_with_every_secret() -> None:
    import time

    body = b"{}"
    ts = int(time.time())
    signature = sign((OTHER, SECRET), "msg_2", ts, body)
    assert len(signature.split(" ")) == 2
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(ts), "webhook-signature": signature}
    for secret in (SECRET, OTHER):
        Webhook(secret).verify(body, headers)
