"""What the ``requests``-based clients share: sessions, timeouts and reading ``Retry-After``."""

from __future__ import annotations

import email.utils
import os
import time
from typing import Any
from urllib.parse import urlsplit

import certifi
import requests
import urllib3


def make_session(user_agent: str = "i2v", base_url: str | None = None) -> requests.Session:
    """A session for one provider; it honours HTTP(S)_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE.

    With ``base_url`` (a provider that is always called at one host) the environment is read
    once, here, instead of on every request: a poll every few seconds from hundreds of workers
    otherwise spends a good part of its CPU re-reading proxy variables.
    """
    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    if base_url is not None:
        session.proxies.update(requests.utils.get_environ_proxies(base_url))
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.trust_env = False
    return session


def make_pool(base_url: str, user_agent: str = "i2v") -> urllib3.PoolManager:
    """A bare urllib3 pool for frequent small GETs to one host: a provider's status polls.

    Hundreds of workers each poll every few seconds, and each poll wakes a process whose caches
    have gone cold; requests' per-call machinery (sessions, hooks, cookies, environment) then
    costs several times the HTTP exchange. Proxy and CA rules are read from the environment as
    for :func:`make_session`.
    """
    proxies = requests.utils.get_environ_proxies(base_url)
    proxy = proxies.get(urlsplit(base_url).scheme) or proxies.get("all")
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    tls: dict[str, Any] = {"ca_cert_dir": bundle} if os.path.isdir(bundle) else {"ca_certs": bundle}
    headers = {"User-Agent": user_agent}
    if proxy:
        return urllib3.ProxyManager(proxy, headers=headers, cert_reqs="CERT_REQUIRED", **tls)
    return urllib3.PoolManager(headers=headers, cert_reqs="CERT_REQUIRED", **tls)


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
