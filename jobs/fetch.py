"""Downloading a user-supplied URL safely: public addresses only, on every hop, with caps and a deadline.

Only the worker fetches (the web process never does). Each redirect is followed by hand so that
its target passes the same URL rules. A direct connection resolves the host once, checks every
address it names, and connects to one of those very addresses (Host and TLS SNI still name the
host), so a DNS answer that changes between check and connect cannot reach a private address.
Through a proxy (HTTP(S)_PROXY) the peer is the proxy: the URL rules still apply, and the proxy
must enforce the egress rules for the addresses behind names.
"""

from __future__ import annotations

import contextvars
import io
import socket
import sys
import threading
import time
from contextlib import suppress
from typing import Any, Protocol
from urllib.parse import urljoin

import urllib3
from PIL import Image
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from jobs.clients.http import environment_proxy, proxy_manager, tls_options
from jobs.images import BadImage, decode
from jobs.urlpolicy import UnsafeURL, inspect_url, is_public_address, literal_address

MAX_REDIRECTS = 5
CHUNK = 64 * 1024


class FetchError(Exception):
    """The URL could not be fetched within the rules; the message says why."""


class Sink(Protocol):
    """Where a download's body goes: a file, a BytesIO, the media store's writer."""

    def write(self, data: bytes, /) -> object: ...


class _Download:
    """One download's allowlist, deadline and sockets; past the deadline its sockets are shut down.

    Used as a context manager: inside it, new connections register their sockets with it.
    """

    def __init__(self, allowlist: tuple[str, ...], seconds: float) -> None:
        self.allowlist = allowlist
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        # A slow drip (a byte now and then) never trips a read timeout: only closing the socket
        # from outside interrupts a read that keeps receiving a little.
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True
        self._token: contextvars.Token[_Download] | None = None

    def __enter__(self) -> _Download:
        self._token = _current.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        if self._token is not None:
            _current.reset(self._token)

    def remaining(self) -> float:
        """Seconds left; FetchError once none are."""
        left = self.ends - time.monotonic()
        if left <= 0 or self.expired:
            raise self.too_slow()
        return left

    def too_slow(self) -> FetchError:
        return FetchError(f"the download took longer than {self.seconds:g} s")

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                sock.close()

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


_current: contextvars.ContextVar[_Download] = contextvars.ContextVar("download")


def resolve_checked(host: str, port: int, allowlist: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Resolve ``host`` once and return its addresses, refusing it if any of them is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    if host not in allowlist and f"{host}:{port}" not in allowlist:
        for info in infos:
            address = literal_address(str(info[4][0]))
            if address is None or not is_public_address(address):
                raise FetchError(f"{host} resolves to a non-public address")
    return infos


class _Tracked:
    """Registers each new socket with the current download, so its deadline can cut it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _current.get().track(sock)
        return sock


class _Pinned:
    """Connects to an address that was checked, from a single resolution (Host and SNI keep the name)."""

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        download = _current.get()
        failure: OSError | None = None
        for family, kind, proto, _, sockaddr in resolve_checked(conn._dns_host, conn.port, download.allowlist):
            sock = socket.socket(family, kind, proto)
            download.track(sock)
            try:
                for option in conn.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(conn.timeout)
                sock.connect(sockaddr)
            except TimeoutError:
                sock.close()
                raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out") from None
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            sys.audit("http.client.connect", conn, conn.host, conn.port)
            return sock
        raise NewConnectionError(conn, f"Failed to establish a new connection: {failure}")


class _PinnedHTTP(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPS(_Pinned, HTTPSConnection):
    pass


class _TrackedHTTP(_Tracked, HTTPConnection):
    pass


class _TrackedHTTPS(_Tracked, HTTPSConnection):
    pass


def _pools(http: type[HTTPConnection], https: type[HTTPSConnection]) -> dict[str, type]:
    return {
        "http": type("Pool", (HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("Pool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
    }


_DIRECT_POOLS = _pools(_PinnedHTTP, _PinnedHTTPS)
_PROXY_POOLS = _pools(_TrackedHTTP, _TrackedHTTPS)


def _manager(url: str) -> urllib3.PoolManager:
    """A fresh pool for one hop: pinned direct connections, or the environment's proxy.

    Each hop has its own connections, so every socket a download reads from is one its deadline
    can cut; no ``~/.netrc`` is read (urllib3 never does).
    """
    proxy = environment_proxy(url)
    if proxy:
        manager: urllib3.PoolManager = proxy_manager(proxy, num_pools=1, **tls_options())
        manager.pool_classes_by_scheme = _PROXY_POOLS
    else:
        manager = urllib3.PoolManager(num_pools=1, **tls_options())
        manager.pool_classes_by_scheme = _DIRECT_POOLS
    return manager


def download(
    url: str,
    sink: Sink,
    *,
    max_bytes: int,
    timeout: tuple[float, float],
    deadline: float,
    allowlist: tuple[str, ...] = (),
    what: str = "the image",
) -> int:
    """GET ``url`` into ``sink`` as it streams, following at most five redirects; returns the size.

    Args:
        url: the URL (checked again here, and every redirect target too).
        sink: where the body goes, chunk by chunk; a failure may leave part of it written.
        max_bytes: the size cap (inclusive), enforced on the declared length and on the stream.
        timeout: (connect, read) seconds of each socket operation.
        deadline: seconds for the whole download, redirects included.
        allowlist: ``IMAGE_HOST_ALLOWLIST``: hosts exempt from the address rules.
        what: how messages name the thing downloaded.

    Raises:
        FetchError: unsafe URL or redirect, too large, too slow, or not a 2xx answer.
    """
    with _Download(allowlist, deadline) as job:
        try:
            return _follow(url, sink, job, max_bytes, timeout, what)
        except HTTPError as exc:
            if job.expired:
                raise job.too_slow() from None
            raise FetchError(f"could not download {what}: {type(exc).__name__}") from None
        except FetchError:
            if job.expired:
                raise job.too_slow() from None
            raise


def _follow(url: str, sink: Sink, job: _Download, max_bytes: int, timeout: tuple[float, float], what: str) -> int:
    for _ in range(MAX_REDIRECTS + 1):
        try:
            checked = inspect_url(url, job.allowlist)
        except UnsafeURL as exc:
            raise FetchError(f"refused {url!r}: {exc}") from None
        left = job.remaining()
        manager = _manager(checked.ascii_url)
        try:
            resp = manager.request(
                "GET",
                checked.ascii_url,
                headers={"User-Agent": "i2v", "Accept-Encoding": "identity"},
                preload_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=min(timeout[0], left), read=min(timeout[1], left)),
            )
            try:
                if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                    url = urljoin(checked.ascii_url, resp.headers["Location"])
                    continue
                return _body(resp, sink, job, max_bytes, what)
            finally:
                resp.release_conn()
                resp.close()
        finally:
            manager.clear()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _body(resp: urllib3.BaseHTTPResponse, sink: Sink, job: _Download, max_bytes: int, what: str) -> int:
    if not 200 <= resp.status < 300:
        raise FetchError(f"the {what.removeprefix('the ')} URL answered {resp.status}")
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        # Asked for identity: a compressed body is refused rather than inflated (a zip bomb).
        raise FetchError(f"{what} came with a content encoding")
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"{what} is larger than {max_bytes} bytes")
    size = 0
    for chunk in resp.stream(CHUNK, decode_content=False):
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"{what} is larger than {max_bytes} bytes")
        job.remaining()
        sink.write(chunk)
    job.remaining()
    return size


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: tuple[float, float],
    deadline: float,
    allowlist: tuple[str, ...] = (),
) -> bytes:
    """GET ``url`` and return its body (see :func:`download`): for images, which are small."""
    body = io.BytesIO()
    download(url, body, max_bytes=max_bytes, timeout=timeout, deadline=deadline, allowlist=allowlist)
    return body.getvalue()


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes as PNG, JPEG, WebP or GIF, refusing anything else (see :mod:`jobs.images`)."""
    try:
        image = decode(data)
    except BadImage as exc:
        raise FetchError(f"the URL did not return a readable image ({exc})") from None
    return image.convert("RGB")
