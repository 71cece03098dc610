"""What the HTTP clients share: requests sessions, urllib3 pools and their TLS context, the libcurl poll pool,
Retry-After, "was it sent?"."""

from __future__ import annotations

import email.utils
import functools
import math
import os
import queue
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import certifi
import pycurl
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


class PollError(Exception):
    """A poll that got no answer to use: not connected, timed out, cut off, a reply over
    :attr:`PollPool.max_body`, or no handle free within the pool's wait.

    The message names the failure only (a libcurl error code and its name), never a URL or a header.

    Attributes:
        code: libcurl's error code, or ``None`` when no handle was free in time.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PollResponse:
    """The final response of a poll (never a proxy's ``CONNECT`` reply or an interim ``1xx``).

    Attributes:
        status: the HTTP status code.
        body: its body, at most :attr:`PollPool.max_body` bytes.
        header_lines: every header line libcurl received, interim responses' included (see :attr:`headers`).
    """

    status: int
    body: bytes
    header_lines: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The final response's headers, names in lower case (repeated ones joined with ``", "``).

        Parsed on demand: a poll that succeeds never needs them.
        """
        headers: dict[str, str] = {}
        for raw in self.header_lines:
            line = raw.decode("iso-8859-1").rstrip("\r\n")
            if line.startswith("HTTP/"):  # a new response begins: a proxy's CONNECT reply or a 1xx came before
                headers = {}
                continue
            name, colon, value = line.partition(":")
            if colon:
                name, value = name.strip().lower(), value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers


#: libcurl's error names by code (``E_OPERATION_TIMEDOUT`` -> 28), for messages without libcurl's text.
_CURL_ERRORS = {
    value: name[2:]
    for name, value in vars(pycurl).items()
    if name.startswith("E_") and isinstance(value, int) and not name.startswith("E_MULTI_")
}


class _Handle:
    """One libcurl easy handle and what its current transfer has received; used by one thread at a time.

    libcurl hands header lines and body chunks to ``list.append``, which runs no Python code: a poll
    costs no Python call per header line or chunk.
    """

    def __init__(self, max_body: int) -> None:
        self.curl = pycurl.Curl()
        self.header_lines: list[bytes] = []
        self.chunks: list[bytes] = []
        self.curl.setopt(pycurl.HEADERFUNCTION, self.header_lines.append)
        self.curl.setopt(pycurl.WRITEFUNCTION, self.chunks.append)
        # libcurl stops a transfer whose body grows past this (CURLE_FILESIZE_EXCEEDED), announced or not.
        self.curl.setopt(pycurl.MAXFILESIZE, max_body)

    def reset(self) -> None:
        """Forget the previous transfer's headers and body."""
        self.header_lines.clear()
        self.chunks.clear()


class PollPool:
    """A few libcurl handles for frequent small GETs to one host: a provider's status polls.

    Hundreds of requests of a worker process each poll every few seconds, and each poll wakes a
    process whose caches have gone cold: what counts is the CPU of one poll. A libcurl GET costs
    less of it than a urllib3 GET (the threads part of ``make bench`` measures CPU per
    request-second), let alone requests' per-call machinery (sessions, hooks, cookies, environment).

    The environment is read once, here, with requests' rules: HTTP(S)_PROXY, ALL_PROXY and
    NO_PROXY (:func:`environment_proxy`; libcurl is told the proxy, or an empty one, and an empty
    no-proxy list, so it applies no proxy rules of its own), and REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE, else certifi (:func:`ca_location`). A user and password in the proxy URL are
    sent to the proxy. ``~/.netrc`` is never read (libcurl reads it only when told to), no cookies
    are kept, redirects are not followed, and only HTTP and HTTPS are spoken.

    The pool is shared by all the threads of a process. Each of its ``size`` handles is used by
    one thread at a time and keeps its connection alive between polls; a thread that finds every
    handle busy waits up to ``wait_timeout`` for one instead of opening another connection (a new
    connection is a TLS handshake), then fails. When a kept-alive connection turns out closed
    before any answer, libcurl sends the GET once more on a new connection, within the same poll.

    Args:
        base_url: the provider's base URL; its scheme and host decide the proxy.
        size: handles (so connections) kept.
        connect_timeout: seconds to connect (and handshake).
        read_timeout: seconds without a byte of the answer (rounded up to whole seconds) after
            which a poll fails; a whole poll takes at most connect + read timeout.
        wait_timeout: seconds a poll may wait for a free handle.
        user_agent: the ``User-Agent`` of every poll.
    """

    #: The largest reply body kept; a longer one aborts the poll as a :class:`PollError`.
    max_body = 2**20

    def __init__(
        self,
        base_url: str,
        *,
        size: int,
        connect_timeout: float,
        read_timeout: float,
        wait_timeout: float,
        user_agent: str = "i2v",
    ) -> None:
        #: The proxy polls go through, or ``""`` for none.
        self.proxy = environment_proxy(base_url) or ""
        self.ca_bundle, self.ca_is_directory = ca_location()
        self.wait_timeout = wait_timeout
        self._free: queue.LifoQueue[_Handle] = queue.LifoQueue()
        for _ in range(size):
            self._free.put(self._handle(connect_timeout, read_timeout, user_agent))

    def _handle(self, connect_timeout: float, read_timeout: float, user_agent: str) -> _Handle:
        handle = _Handle(self.max_body)
        curl = handle.curl
        web = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
        options: list[tuple[int, Any]] = [
            (pycurl.NOSIGNAL, 1),  # threads: no SIGALRM for timeouts
            (pycurl.PROTOCOLS, web),
            (pycurl.REDIR_PROTOCOLS, web),
            (pycurl.FOLLOWLOCATION, 0),
            (pycurl.CONNECTTIMEOUT_MS, round(connect_timeout * 1000)),
            (pycurl.TIMEOUT_MS, round((connect_timeout + read_timeout) * 1000)),
            # The read timeout as urllib3 and requests have it: no byte for that long (in whole seconds).
            (pycurl.LOW_SPEED_LIMIT, 1),
            (pycurl.LOW_SPEED_TIME, max(1, math.ceil(read_timeout))),
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
            (pycurl.USERAGENT, user_agent),
            (pycurl.SSL_VERIFYPEER, 1),
            (pycurl.SSL_VERIFYHOST, 2),
            (pycurl.PROXY_SSL_VERIFYPEER, 1),
            (pycurl.PROXY_SSL_VERIFYHOST, 2),
            (pycurl.PROXY, self.proxy),
            (pycurl.NOPROXY, ""),
        ]
        for option, value in options:
            curl.setopt(option, value)
        # Only the chosen CA location: libcurl has a compiled-in bundle path, unset when a directory is given.
        if self.ca_is_directory:
            curl.unsetopt(pycurl.CAINFO)
            curl.unsetopt(pycurl.PROXY_CAINFO)
            curl.setopt(pycurl.CAPATH, self.ca_bundle)
            curl.setopt(pycurl.PROXY_CAPATH, self.ca_bundle)
        else:
            curl.setopt(pycurl.CAINFO, self.ca_bundle)
            curl.setopt(pycurl.PROXY_CAINFO, self.ca_bundle)
        return handle

    def get(self, url: str, headers: Mapping[str, str]) -> PollResponse:
        """GET ``url`` with ``headers`` on a free handle (waiting up to ``wait_timeout`` for one).

        Raises:
            PollError: no handle free in time, or no complete response (not connected, timed
                out, cut off, or a body over :attr:`max_body`).
        """
        try:
            handle = self._free.get(timeout=self.wait_timeout)
        except queue.Empty:
            raise PollError(f"no poll connection free within {self.wait_timeout:g} s") from None
        try:
            handle.reset()
            curl = handle.curl
            curl.setopt(pycurl.URL, url)
            curl.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in headers.items()])
            try:
                curl.perform()
            except pycurl.error as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
                raise PollError(f"libcurl error {code} ({_CURL_ERRORS.get(code, 'unknown')})", code) from None
            return PollResponse(curl.getinfo(pycurl.RESPONSE_CODE), b"".join(handle.chunks), tuple(handle.header_lines))
        finally:
            handle.reset()
            self._free.put(handle)


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
