"""A provider name that does not resolve means "never sent": retryable, never "answer lost"."""

from __future__ import annotations

import socket

import pytest

from config import settings_from
from jobs.clients.pika import PikaClient
from jobs.errors import TransientError

#: A name under the reserved ``.invalid`` domain; lookups are stubbed, so nothing leaves the machine.
UNRESOLVABLE = "http://pika.example.invalid/web"


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every name lookup fail as a resolver does for an unknown name; return the names asked."""
    asked: list[str] = []

    def fail(host: str, *args: object, **kwargs: object) -> None:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    return asked


def test_dns_failure_on_pika_submit_is_a_retryable_error_never_sent(no_dns: list[str]) -> None:
    """The pipeline retries a never-sent submission and ends provider_unavailable, not generation_unknown."""
    client = PikaClient(settings_from({"PIKAPI_BASE_URL": UNRESOLVABLE, "PIKAPI_BEARER_TOKEN": "t"}))
    with pytest.raises(TransientError) as caught:
        client.submit("https://cdn.example.com/plane.jpg", "a plane")
    assert caught.value.kind == "connection"
    assert caught.value.sent is False
    assert "pika.example.invalid" in no_dns
