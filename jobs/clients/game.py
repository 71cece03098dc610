"""The GAME callback endpoint: where a request's one result is POSTed."""

from __future__ import annotations

from dataclasses import dataclass

import requests

from config import Settings, plain_http_off_machine
from jobs.clients.http import SessionPerCall, retry_after_seconds


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt."""

    status_code: int | None
    retry_after: float | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        """Only a 2xx answer counts as delivered."""
        return self.status_code is not None and 200 <= self.status_code < 300


def may_carry_key(url: str, own_url: str, *, development: bool) -> bool:
    """Whether ``x-api-key`` may go to ``url``, given the URL ``CALLBACK_API_URL`` builds for the request.

    Only to that exact URL, never to another path on the same host; and outside development never
    over plain ``http://`` except to a loopback host.
    """
    return url == own_url and (development or not plain_http_off_machine(url))


class GameClient:
    """POSTs callbacks; never raises for transport trouble, which is an attempt like any other.

    Redirects are never followed: requests would carry ``x-api-key``, the webhook headers and the
    body to any ``Location`` (it strips only ``Authorization``), and turn a 302 into a GET whose
    200 would look like a delivery. A 3xx is a failed attempt with its status code, like a 5xx.
    """

    def __init__(self, settings: Settings, session: requests.Session | SessionPerCall | None = None) -> None:
        self.settings = settings
        self.timeout = (settings.http_connect_timeout, settings.http_read_timeout)
        # A session per callback by default: the threads of a worker call back at the same time,
        # and a requests session is not thread-safe.
        self.session = session or SessionPerCall()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        """Send one attempt of a callback with the given raw JSON body and headers."""
        headers = {"Content-Type": "application/json", **headers}
        try:
            resp = self.session.post(url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return DeliveryResult(status_code=None, error=type(exc).__name__)
        return DeliveryResult(
            status_code=resp.status_code,
            retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
        )
