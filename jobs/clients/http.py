"""What the ``requests``-based clients share: sessions, timeouts and reading ``Retry-After``."""

from __future__ import annotations

import email.utils
import time

import requests


def make_session(user_agent: str = "i2v") -> requests.Session:
    """A session for one provider; it honours HTTP(S)_PROXY and NO_PROXY from the environment."""
    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    return session


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (delta seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def was_sent(exc: requests.RequestException) -> bool:
    """Whether a failed request may have reached the server.

    A connect timeout or a refused/unresolvable connection never sent the request; a read timeout
    or a connection dropped mid-exchange may have, and the server may have acted on it.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout):
        text = repr(exc.args[0]) if exc.args else ""
        return not any(mark in text for mark in ("NewConnectionError", "NameResolutionError", "ConnectTimeout"))
    return True
