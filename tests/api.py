"""The service's HTTP API as the tests drive it: submit, read, cancel, redeliver, and wait for the end.

One class serves the app's test client (the ``api`` fixture) and, through :class:`HttpApi`, a real
``web`` process over HTTP, so every test level submits and waits the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import requests
from flask.testing import FlaskClient

from tests.fakes import FakeGame
from tests.helpers import wait_for

SUBMIT = "/api/v1/i2v"
PLAIN = "https://cdn.example.com/images/plane.jpg"
#: Another image, for a second submission under the same id.
OTHER = "https://cdn.example.com/images/boat.jpg"
#: PLAIN as some callers send it: HTML-escaped.
ESCAPED = "https:&#x2F;&#x2F;cdn.example.com&#x2F;images&#x2F;plane.jpg"
#: Request statuses after which nothing more happens but the callback.
TERMINAL = ("completed", "failed", "canceled")
#: The members an RFC 9457 problem of this API may have.
PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id", "errors"}

#: API keys of the tests that turn authentication on (I2V_API_KEYS=API_KEYS).
KEY_A = "ak_alpha_3f9c1e7b2d5a"
KEY_B = "ak_bravo_8e2a6c4f1b7d"
#: Configured only as ``sha256:<hex>``.
KEY_C = "ak_charlie_5d7e9a1c3b0f"
#: Configured only as a bare 64-hex digest.
KEY_D = "ak_delta_2b4d6f8a0c9e"
API_KEYS = ",".join(
    [KEY_A, KEY_B, "sha256:" + hashlib.sha256(KEY_C.encode()).hexdigest(), hashlib.sha256(KEY_D.encode()).hexdigest()]
)


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header for an API key (none for ``None``)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def assert_problem(resp: Any, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status``, never HTML or a traceback; its body."""
    text = resp.get_data(as_text=True)
    assert resp.status_code == status, text
    assert resp.mimetype == "application/problem+json", resp.mimetype
    body = json.loads(text)
    assert isinstance(body, dict)
    assert set(body) <= PROBLEM_KEYS, set(body) - PROBLEM_KEYS
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    lowered = text.lower()
    assert "<html" not in lowered and "<!doctype" not in lowered and "traceback" not in lowered
    return body


class Api:
    """The API of the app under test, and the callbacks the fake GAME got from it.

    Methods named after an endpoint return its raw response, for tests that check codes and
    headers; :meth:`record` and :meth:`settled` return the status body.
    """

    def __init__(self, client: FlaskClient, game: FakeGame | None = None) -> None:
        self.client = client
        self.game = game

    def request(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        """One HTTP request to the service, with the key's Authorization header when given."""
        headers = {**bearer(key), **kwargs.pop("headers", {})}
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def body(self, resp: Any) -> Any:
        """The JSON body of a response."""
        return resp.get_json()

    def submit(
        self,
        request_id: str = "req-1",
        image: str = PLAIN,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        expect: int | None = None,
        **body: Any,
    ) -> Any:
        """``POST /api/v1/i2v`` for ``image`` under ``request_id``; ``body`` adds fields (``callback_url``).

        Args:
            request_id: the ``x-request-id`` header.
            image: the ``image_id`` field.
            key: the caller's API key, if any.
            headers: more headers.
            expect: the status code the test requires (checked here, with the body in the failure).
            **body: more fields of the JSON body.
        """
        resp = self.request(
            "POST",
            SUBMIT,
            key=key,
            json={"image_id": image, **body},
            headers={"x-request-id": request_id, **(headers or {})},
        )
        if expect is not None:
            assert resp.status_code == expect, (resp.status_code, self.body(resp))
        return resp

    def status(self, request_id: str, *, key: str | None = None, **kwargs: Any) -> Any:
        """``GET /api/v1/i2v/{request_id}``."""
        return self.request("GET", f"{SUBMIT}/{request_id}", key=key, **kwargs)

    def cancel(self, request_id: str, *, key: str | None = None, **kwargs: Any) -> Any:
        """``DELETE /api/v1/i2v/{request_id}``."""
        return self.request("DELETE", f"{SUBMIT}/{request_id}", key=key, **kwargs)

    def redeliver(self, request_id: str, *, key: str | None = None, **kwargs: Any) -> Any:
        """``POST /api/v1/i2v/{request_id}/callback``."""
        return self.request("POST", f"{SUBMIT}/{request_id}/callback", key=key, **kwargs)

    def record(self, request_id: str, *, key: str | None = None) -> dict[str, Any]:
        """The status body of a request that exists."""
        resp = self.status(request_id, key=key)
        assert resp.status_code == 200, (resp.status_code, self.body(resp))
        return self.body(resp)

    def settled(self, request_id: str, timeout: float = 20.0, *, key: str | None = None) -> dict[str, Any]:
        """Wait until the request has ended and its callback is delivered or given up; its status body."""

        def done() -> dict[str, Any] | None:
            body = self.record(request_id, key=key)
            return body if body["status"] in TERMINAL and body["callback"]["status"] != "pending" else None

        return wait_for(done, timeout=timeout, interval=0.1, message=f"{request_id} to settle")

    def provider_job(self, request_id: str, timeout: float = 15.0) -> str:
        """Wait until the record holds the provider's job id (the video or caption job exists); that id."""
        return wait_for(
            lambda: self.record(request_id)["provider"]["job_id"],
            timeout=timeout,
            message=f"the provider's job id in the record of {request_id}",
        )

    def one_callback(self, request_id: str, timeout: float = 20.0, grace: float = 0.0) -> dict[str, Any]:
        """The body of the one callback GAME got for ``request_id``, checked against the contract.

        Args:
            request_id: whose callback.
            timeout: seconds to wait for the first callback.
            grace: seconds to wait after it, in which a duplicate would show up.
        """
        assert self.game is not None, "this Api has no fake GAME"
        game = self.game
        wait_for(lambda: game.callbacks_for(request_id), timeout=timeout, message=f"a callback for {request_id}")
        time.sleep(grace)
        callbacks = game.callbacks_for(request_id)
        assert len(callbacks) == 1, [c.json for c in callbacks]
        assert callbacks[0].problems() == []
        return callbacks[0].json

    def failed_with(self, request_id: str, code: str) -> dict[str, Any]:
        """Wait until the request has failed with error ``code`` and called back FAILED once; its status body."""
        record = self.settled(request_id)
        assert record["status"] == "failed", record
        assert record["error"]["code"] == code, record["error"]
        assert self.one_callback(request_id) == {"data": {"addToInventory": False, "status": "FAILED", "output": None}}
        return record


class HttpApi(Api):
    """The same API on a real ``web`` process, over HTTP (responses are ``requests`` responses)."""

    def __init__(self, base_url: str, game: FakeGame | None = None, timeout: float = 5.0) -> None:
        self.game = game
        self.base_url = base_url
        self.timeout = timeout

    def request(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> requests.Response:
        """One HTTP request to the process."""
        headers = {**bearer(key), **kwargs.pop("headers", {})}
        return requests.request(method, self.base_url + path, headers=headers, timeout=self.timeout, **kwargs)

    def body(self, resp: Any) -> Any:
        """The JSON body of a response."""
        return resp.json()
