"""The poll pool reads proxy and CA settings from the environment with requests' rules, shares one TLS
context per process, and makes a thread wait for a pooled connection rather than open another."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
import trustme
import urllib3

from config import Settings
from jobs.clients.http import SessionPerCall, make_pool, tls_context, tls_options
from jobs.clients.pika import PikaClient
from jobs.errors import TransientError
from tests.helpers import wait_for

BASE = "https://api.pikapikapika.io/web"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def test_no_proxy_variables_means_a_direct_pool_trusting_certifi() -> None:
    pool = make_pool(BASE)
    assert not isinstance(pool, urllib3.ProxyManager)
    context = pool.connection_pool_kw["ssl_context"]
    assert context is tls_context(certifi.where(), False)
    assert context.verify_mode == urllib3.util.ssl_.CERT_REQUIRED and context.check_hostname
    # certifi's public roots, parsed once into the context.
    assert context.cert_store_stats()["x509_ca"] > 100
    assert pool.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"


def test_https_proxy_is_used_unless_no_proxy_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    pool = make_pool(BASE)
    assert isinstance(pool, urllib3.ProxyManager)
    assert pool.proxy.port == 3128
    monkeypatch.setenv("NO_PROXY", "api.pikapikapika.io")
    assert not isinstance(make_pool(BASE), urllib3.ProxyManager)


def test_a_ca_bundle_file_or_directory_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    context = make_pool(BASE).connection_pool_kw["ssl_context"]
    # Only the bundle's one CA is trusted, not certifi's roots.
    assert context.cert_store_stats()["x509_ca"] == 1
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path))
    assert make_pool(BASE).connection_pool_kw["ssl_context"] is tls_context(str(tmp_path), True)


def test_every_pool_of_a_process_shares_one_tls_context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An SSL context with a CA bundle costs about 0.7 MB and a parse of the bundle: one per process."""
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    contexts = [make_pool(BASE).connection_pool_kw["ssl_context"] for _ in range(3)]
    contexts.append(tls_options()["ssl_context"])  # the downloads' pools
    assert all(context is contexts[0] for context in contexts)


class _Server(http.server.ThreadingHTTPServer):
    """A keep-alive HTTP server on loopback that counts connections; ``/slow`` answers once released."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def do_GET(self) -> None:
                if self.path == "/slow":
                    server.release.wait(10)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                """Quiet."""

        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self):  # type: ignore[no-untyped-def]
        self.connections += 1
        return super().get_request()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def test_a_thread_waits_for_a_pooled_connection_instead_of_opening_another(server: _Server) -> None:
    """With every kept connection busy, a poll waits (up to its pool timeout): no extra connection
    and handshake that would be closed after one exchange."""
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pool = make_pool(base, maxsize=1)
    slow = threading.Thread(target=lambda: pool.request("GET", f"{base}/slow", retries=False))
    slow.start()
    wait_for(lambda: server.connections == 1, timeout=5, message="the slow request's connection")
    with pytest.raises(urllib3.exceptions.EmptyPoolError):
        pool.request("GET", f"{base}/fast", retries=False, pool_timeout=0.3)
    server.release.set()
    slow.join(5)
    assert pool.request("GET", f"{base}/fast", retries=False, pool_timeout=5).status == 200
    assert server.connections == 1


def test_a_poll_that_finds_every_connection_busy_fails_as_transient_after_the_connect_timeout(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for a pooled connection counts as connecting: hung polls holding them all delay a
    poll by at most HTTP_CONNECT_TIMEOUT, then it is tried again at the next interval."""
    monkeypatch.setattr("jobs.clients.pika.POLL_CONNECTIONS", 1)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pika = PikaClient(Settings(pikapi_base_url=base, pikapi_bearer_token="t", http_connect_timeout=0.3))
    hung = threading.Thread(target=lambda: pika.polls.request("GET", f"{base}/slow", retries=False))
    hung.start()
    wait_for(lambda: server.connections == 1, timeout=5, message="the hung poll's connection")
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        pika.poll("job-1")
    assert caught.value.kind == "connection"
    assert time.monotonic() - started < 3
    server.release.set()
    hung.join(5)


def test_sessions_verify_through_the_shared_context_without_parsing_the_bundle_again(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A Pika submission and a callback each have a session of their own, but not a TLS context of their own."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").configure_cert(server_context := ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    shared = tls_context(str(bundle), False)
    wrapped: list[str] = []
    wrap = shared.wrap_socket

    def counting_wrap(sock: object, *args: object, **kwargs: object) -> object:
        wrapped.append(str(kwargs.get("server_hostname")))
        return wrap(sock, *args, **kwargs)

    def no_second_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CA bundle was parsed again for a connection")

    monkeypatch.setattr(shared, "wrap_socket", counting_wrap)
    monkeypatch.setattr(shared, "load_verify_locations", no_second_parse)
    base = f"https://127.0.0.1:{server.server_address[1]}"
    calls = SessionPerCall()
    assert [calls.post(f"{base}/callback", json={}, timeout=5).status_code for _ in range(2)] == [200, 200]
    # Two calls, two sessions, two connections: both through the one context.
    assert wrapped == ["127.0.0.1", "127.0.0.1"]
