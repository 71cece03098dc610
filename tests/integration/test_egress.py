"""Outbound HTTP honours the standard proxy variables, so operators can force egress through a proxy; never ~/.netrc."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from jobs import fetch as fetch_module
from jobs.fetch import FetchError, fetch
from tests.fakes.files import FileServer, image_bytes


class ForwardingProxy(ThreadingHTTPServer):
    """A plain HTTP forward proxy on 127.0.0.1 that records the absolute URLs it relays."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: ForwardingProxy

    def _relay(self) -> None:
        with self.server.lock:
            self.server.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
        upstream = requests.request(
            self.command,
            self.path,
            data=body,
            headers=headers,
            timeout=30,
            proxies={"http": "", "https": ""},
            stream=True,
        )
        self.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in ("transfer-encoding", "connection", "content-encoding", "content-length"):
                self.send_header(name, value)
        length = upstream.headers.get("Content-Length")
        if length is None or "Content-Encoding" in upstream.headers:
            chunks: Iterable[bytes] = [upstream.content]
            length = str(len(upstream.content))
        else:  # relayed as it arrives, so a slow upstream body stays slow
            chunks = upstream.raw.stream(100, decode_content=False)
        self.send_header("Content-Length", length)
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up

    do_GET = do_POST = _relay

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    server = ForwardingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_every_provider_call_goes_through_the_configured_proxy(api, fakes, start_process, proxy) -> None:
    """With HTTP_PROXY set, Replicate (httpx), Pika and GAME (requests) calls all pass the proxy."""
    start_process("worker", HTTP_PROXY=proxy.url, http_proxy=proxy.url, NO_PROXY="", no_proxy="")
    api.submit("proxied", expect=202)
    assert api.settled("proxied")["status"] == "completed"
    seen = "\n".join(proxy.seen)
    assert f"POST {fakes.replicate.url}/v1/predictions" in seen
    assert f"POST {fakes.pika.base_url}/generate" in seen
    assert f"GET {fakes.pika.base_url}/jobs/" in seen
    assert f"POST {fakes.game.url}/requests/proxied/callback" in seen


def test_the_worker_never_reads_netrc(api, fakes, start_process, tmp_path: Path) -> None:
    """A netrc naming the providers' host changes nothing: Pika still gets its bearer token, not Basic auth."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login leaked password leaked\n")
    netrc.chmod(0o600)
    start_process("worker", NETRC=str(netrc))
    api.submit("netrc", expect=202)
    assert api.settled("netrc")["status"] == "completed"


@pytest.fixture
def download_proxy(proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch) -> ForwardingProxy:
    """The proxy in this process's environment, for every host."""
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", proxy.url)
    return proxy


def test_a_download_through_a_proxy_leaves_name_resolution_to_it(
    files: FileServer, download_proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a proxy the peer is the proxy: the worker sends it the URL and neither resolves nor pins the host."""

    def no_resolution(*args: object) -> None:
        raise AssertionError("the worker resolved a host it sends to a proxy")

    monkeypatch.setattr(fetch_module, "resolve_checked", no_resolution)
    png = image_bytes()
    url = files.put("/a.png", png, "image/png")
    assert fetch(url, max_bytes=100_000, timeout=(2.0, 5.0), deadline=10.0, allowlist=("127.0.0.1",)) == png
    assert download_proxy.seen == [f"GET {url}"]


def test_the_download_deadline_holds_through_a_proxy(files: FileServer, download_proxy: ForwardingProxy) -> None:
    """A body that drips through the proxy (100 bytes every 0.2 s, 20 s in all) is cut at the deadline too."""
    url = files.put("/drip.png", os.urandom(10_000), "image/png", drip=0.2)
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 1 s"):
        fetch(url, max_bytes=100_000, timeout=(2.0, 30.0), deadline=1.0, allowlist=("127.0.0.1",))
    assert time.monotonic() - started < 10


def test_a_download_proxy_gets_the_credentials_in_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY=http://user:pass@host sends Proxy-Authorization, as requests did for downloads."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://egress:s%40cret@127.0.0.1:3128")
    manager = fetch_module._manager("http://cdn.example.com/a.png")
    assert manager.proxy_headers == {"proxy-authorization": "Basic ZWdyZXNzOnNAY3JldA=="}
