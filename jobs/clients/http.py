"""What the HTTP clients share: requests sessions, urllib3 pools and their TLS context, Retry-After, "was it sent?"."""

from __future__ import annotations

import email.utils
import functools
import os
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import certifi
import requests
import urllib3


class _NoAuth(requests.auth.AuthBase):
    """Leaves a request as it is: set as a session's auth, it stops requests reading ``~/.netrc``."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class Session(requests.Session):
    """A requests session that reads proxies and CA bundles from the environment, but never ``~/.netrc``.

    With ``trust_env`` requests also looks up ``~/.netrc`` (or ``$NETRC``) for every request and
    redirect without auth, and its Basic credentials then replace the provider's own
    ``Authorization`` header. Turning ``trust_env`` off would lose the proxy and CA variables, so
    the netrc look-ups are cut instead: a session-wide no-op auth, and redirects that only strip.
    """

    def __init__(self) -> None:
        super().__init__()
        self.auth = _NoAuth()

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        """Drop ``Authorization`` on a redirect to another host, as requests does, without netrc."""
        if "Authorization" in prepared_request.headers and self.should_strip_auth(
            response.request.url or "", prepared_request.url or ""
        ):
            del prepared_request.headers["Authorization"]


class SharedContextAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, verifying HTTPS through the process's one SSL context for the chosen CA bundle.

    requests hands urllib3 the CA bundle's path (``verify``: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE
    from the environment, else certifi's), and urllib3 then builds a context and parses the bundle
    for every new connection, in the thread that connects. A Pika submission and a callback each
    run on a session of their own (see :class:`SessionPerCall`): without this, every request of a
    worker would build its own context, some 0.7 MB of short-lived allocations that the thread's
    malloc arena keeps long after. The same bundle is trusted either way.
    """

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """requests' pool key, with the shared context in place of the bundle's path."""
        host, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if verify is not False and host.get("scheme") == "https":
            bundle = verify if isinstance(verify, str) else requests.certs.where()
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = tls_context(bundle, os.path.isdir(bundle))
        return host, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        """requests' check of the bundle's path, without handing the path to a pool that has the shared context."""
        super().cert_verify(conn, url, verify, cert)
        if verify and getattr(conn, "conn_kw", {}).get("ssl_context") is not None:
            conn.ca_certs = None
            conn.ca_cert_dir = None


def make_session(user_agent: str = "i2v") -> requests.Session:
    """A session for one provider; it honours HTTP(S)_PROXY and NO_PROXY from the environment."""
    session = Session()
    session.mount("https://", SharedContextAdapter())
    session.headers["User-Agent"] = user_agent
    return session


class SessionPerCall:
    """Posts like a requests session, but through a new session for every call.

    A worker process runs many requests at once in threads, and requests does not promise that a
    ``Session`` is thread-safe. Its calls here (a Pika submission, a callback) come once or a few
    times per request, so a session each costs little, and none is kept open between them.

    Args:
        user_agent: the ``User-Agent`` of every call.
    """

    def __init__(self, user_agent: str = "i2v") -> None:
        self.user_agent = user_agent
        #: Headers every call sends (on top of the session's defaults).
        self.headers: dict[str, str] = {}

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """``requests.Session.post`` on a session of this call's own; the body is read before it closes."""
        with make_session(self.user_agent) as session:
            session.headers.update(self.headers)
            return session.post(url, **kwargs)


def environment_proxy(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY / ALL_PROXY name for ``url`` unless NO_PROXY exempts it (requests' rules)."""
    proxies = requests.utils.get_environ_proxies(url)
    return proxies.get(urlsplit(url).scheme) or proxies.get("all") or None


def proxy_manager(proxy: str, **options: Any) -> urllib3.ProxyManager:
    """A urllib3 pool through ``proxy``, sending the user and password in its URL as requests does."""
    auth = urllib3.util.parse_url(proxy).auth
    headers = urllib3.util.make_headers(proxy_basic_auth=unquote(auth)) if auth else None
    return urllib3.ProxyManager(proxy, proxy_headers=headers, **options)


def ca_location() -> tuple[str, bool]:
    """The CA bundle requests would trust (REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else certifi); is it a directory?"""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    return bundle, os.path.isdir(bundle)


@functools.cache
def tls_context(bundle: str, is_directory: bool) -> ssl.SSLContext:
    """One verifying SSL context per CA location and process, shared by every pool and thread.

    Left to itself, urllib3 builds a context and parses the CA bundle again for every new
    connection (a corporate bundle holds some 150 certificates); one context costs about 0.7 MB.
    An ``SSLContext`` may be used by many threads at once once it is set up.
    """
    context = urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    if is_directory:
        context.load_verify_locations(capath=bundle)
    else:
        context.load_verify_locations(cafile=bundle)
    return context


def tls_options() -> dict[str, Any]:
    """urllib3 TLS arguments: verify against the environment's CA bundle, through the process's shared context."""
    return {"cert_reqs": "CERT_REQUIRED", "ssl_context": tls_context(*ca_location())}


def make_pool(base_url: str, user_agent: str = "i2v", maxsize: int = 1) -> urllib3.PoolManager:
    """A bare urllib3 pool for frequent small GETs to one host: a provider's status polls.

    Hundreds of workers each poll every few seconds, and each poll wakes a process whose caches
    have gone cold; requests' per-call machinery (sessions, hooks, cookies, environment) then
    costs several times the HTTP exchange. The environment is read once, here, with requests'
    rules: HTTP(S)_PROXY and NO_PROXY, and REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE (else certifi),
    parsed once per process (:func:`tls_context`). urllib3 never reads ``~/.netrc``.

    The pool is thread-safe and shared by all the threads of a worker process. It keeps at most
    ``maxsize`` connections per host, and a thread that finds them all busy waits for one
    (``block``; give each request a ``pool_timeout``) instead of opening another that would be
    closed after one exchange: a new connection is a TLS handshake.
    """
    proxy = environment_proxy(base_url)
    options: dict[str, Any] = {"headers": {"User-Agent": user_agent}, "maxsize": maxsize, "block": True}
    if proxy:
        return proxy_manager(proxy, **options, **tls_options())
    return urllib3.PoolManager(**options, **tls_options())


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
