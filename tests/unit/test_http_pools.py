"""The poll pool (libcurl) reads proxy and CA settings from the environment with requests' rules, never
``~/.netrc``, keeps only the final response, caps the body, and makes a thread wait for a handle rather
than open another connection; requests sessions share one TLS context per process."""

from __future__ import annotations

import base64
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from config import Settings
from jobs.clients.http import PollError, PollPool, SessionPerCall, tls_context, tls_options
from jobs.clients.pika import PikaClient
from jobs.errors import GenerationFailed, TransientError
from tests.helpers import wait_for

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
VIDEO = b'{"videos": [{"status": "finished", "resultUrl": "https://cdn.example.com/v.mp4", "progress": 100}]}'


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def make_pool(base: str, size: int = 1, wait_timeout: float = 5.0) -> PollPool:
    return PollPool(base, size=size, connect_timeout=5, read_timeout=5, wait_timeout=wait_timeout)


class _Server(http.server.ThreadingHTTPServer):
    """A keep-alive HTTP server on loopback that counts connections and records request headers.

    ``/slow`` answers once released; ``/hints`` sends a ``103 Early Hints`` before its answer;
    ``/big`` answers 2 MiB (``/big-unannounced`` without a length); paths in ``replies`` answer what they name.
    """

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0
        self.release = threading.Event()
        self.seen: list[dict[str, str]] = []
        self.replies: dict[str, tuple[int, dict[str, str], bytes]] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def do_GET(self) -> None:
                server.seen.append({name.lower(): value for name, value in self.headers.items()})
                status, headers, body = server.replies.get(self.path, (200, {}, b"{}"))
                if self.path == "/slow":
                    server.release.wait(10)
                elif self.path == "/hints":
                    self.send_response_only(103)
                    self.send_header("Link", "</style.css>; rel=preload")
                    self.send_header("X-Interim", "1")
                    self.end_headers()
                    headers = {"X-Final": "yes", "Set-Cookie": "a=1"}
                elif self.path in ("/big", "/big-unannounced"):
                    body = b"x" * (2 * 2**20)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if self.path == "/hints":
                    self.send_header("Set-Cookie", "b=2")
                if self.path == "/big-unannounced":  # no length: the body ends when the connection does
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self):  # type: ignore[no-untyped-def]
        self.connections += 1
        return super().get_request()

    def serve_tls(self, ca: trustme.CA) -> None:
        """Serve HTTPS with a certificate for 127.0.0.1 from ``ca``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.socket = context.wrap_socket(self.socket, server_side=True)


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


def url_of(server: _Server, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server_address[1]}"


class _RecordingProxy:
    """A loopback proxy that records each request's head and refuses it (403): nothing is forwarded."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.heads: list[list[str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.heads.append(head.decode("latin-1").split("\r\n\r\n")[0].split("\r\n"))
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy() -> Iterator[_RecordingProxy]:
    recorder = _RecordingProxy()
    yield recorder
    recorder.close()


def test_no_proxy_variables_means_an_empty_proxy_and_a_direct_poll(server: _Server) -> None:
    """An empty proxy also stops libcurl from reading proxy variables of its own."""
    pool = make_pool(url_of(server))
    assert pool.proxy == ""
    reply = pool.get(f"{url_of(server)}/fast", {"Accept": "application/json"})
    assert (reply.status, reply.body) == (200, b"{}")
    assert server.seen[0]["accept"] == "application/json"
    assert server.seen[0]["user-agent"] == "i2v"


def test_https_proxy_is_used_with_its_credentials_unless_no_proxy_names_the_host(
    server: _Server, proxy: _RecordingProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server.serve_tls(ca)
    (bundle := tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    base = url_of(server, "https")
    monkeypatch.setenv("HTTPS_PROXY", f"http://poller:p%40ss@127.0.0.1:{proxy.port}")

    pool = make_pool(base)
    with pytest.raises(PollError):  # the proxy refuses the tunnel
        pool.get(f"{base}/fast", {})
    assert proxy.heads[0][0] == f"CONNECT 127.0.0.1:{server.server_address[1]} HTTP/1.1"
    credentials = base64.b64encode(b"poller:p@ss").decode()
    assert f"Proxy-Authorization: Basic {credentials}" in proxy.heads[0]
    assert server.seen == []

    # libcurl would read this as a network holding the host (and go direct), requests as naming no
    # host: requests' rules are the only ones, so the poll still goes to the proxy.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1/0")
    with pytest.raises(PollError):
        make_pool(base).get(f"{base}/fast", {})
    assert len(proxy.heads) == 2 and server.seen == []

    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    direct = make_pool(base)
    assert direct.proxy == ""
    assert direct.get(f"{base}/fast", {}).status == 200
    assert len(proxy.heads) == 2


def test_a_ca_bundle_file_is_trusted_and_certifi_alone_refuses_a_private_ca(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server.serve_tls(ca)
    base = url_of(server, "https")
    with pytest.raises(PollError) as refused:
        make_pool(base).get(f"{base}/fast", {})
    assert "PEER_FAILED_VERIFICATION" in str(refused.value)
    (bundle := tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert make_pool(base).get(f"{base}/fast", {}).status == 200


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to hash a CA directory")
def test_a_ca_directory_is_trusted(server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = trustme.CA()
    server.serve_tls(ca)
    base = url_of(server, "https")
    (pem := tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)], check=True, capture_output=True, text=True
    ).stdout.strip()
    (directory := tmp_path / "certs").mkdir()
    (directory / f"{subject_hash}.0").write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("CURL_CA_BUNDLE", str(directory))
    assert make_pool(base).get(f"{base}/fast", {}).status == 200
    (directory / f"{subject_hash}.0").unlink()
    with pytest.raises(PollError):
        make_pool(base).get(f"{base}/fast", {})


def test_netrc_is_never_read(server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert make_pool(url_of(server)).get(f"{url_of(server)}/fast", {}).status == 200
    assert "authorization" not in server.seen[0]


def test_only_the_final_responses_headers_are_kept(server: _Server) -> None:
    reply = make_pool(url_of(server)).get(f"{url_of(server)}/hints", {})
    assert reply.status == 200
    assert reply.headers["x-final"] == "yes"
    assert reply.headers["set-cookie"] == "a=1, b=2"
    assert "link" not in reply.headers and "x-interim" not in reply.headers


def test_a_body_over_the_cap_fails_the_poll_and_the_handle_serves_again(server: _Server) -> None:
    pool = make_pool(url_of(server))
    for path in ("/big", "/big-unannounced"):
        with pytest.raises(PollError) as caught:
            pool.get(f"{url_of(server)}{path}", {})
        assert "FILESIZE_EXCEEDED" in str(caught.value)
    assert pool.get(f"{url_of(server)}/fast", {}).body == b"{}"


def test_a_thread_waits_for_a_free_handle_instead_of_opening_another_connection(server: _Server) -> None:
    """With every handle busy, a poll waits (up to the wait timeout): no extra connection and
    handshake that would be closed after one exchange."""
    base = url_of(server)
    pool = make_pool(base, size=1, wait_timeout=0.3)
    slow = threading.Thread(target=lambda: pool.get(f"{base}/slow", {}))
    slow.start()
    wait_for(lambda: server.connections == 1, timeout=5, message="the slow request's connection")
    started = time.monotonic()
    with pytest.raises(PollError) as caught:
        pool.get(f"{base}/fast", {})
    assert caught.value.code is None
    assert 0.25 < time.monotonic() - started < 3
    server.release.set()
    slow.join(5)
    assert pool.get(f"{base}/fast", {}).status == 200
    assert server.connections == 1


def test_a_poll_that_finds_every_connection_busy_fails_as_transient_after_the_connect_timeout(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for a pooled connection counts as connecting: hung polls holding them all delay a
    poll by at most HTTP_CONNECT_TIMEOUT, then it is tried again at the next interval."""
    monkeypatch.setattr("jobs.clients.pika.POLL_CONNECTIONS", 1)
    base = url_of(server)
    pika = PikaClient(Settings(pikapi_base_url=base, pikapi_bearer_token="t", http_connect_timeout=0.3))
    hung = threading.Thread(target=lambda: pika.polls.get(f"{base}/slow", {}))
    hung.start()
    wait_for(lambda: server.connections == 1, timeout=5, message="the hung poll's connection")
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        pika.poll("job-1")
    assert caught.value.kind == "connection"
    assert time.monotonic() - started < 3
    server.release.set()
    hung.join(5)


def test_a_stalled_answer_fails_after_the_read_timeout_not_the_whole_polls_bound(server: _Server) -> None:
    """As with urllib3's read timeout, a poll whose answer stalls ends after HTTP_READ_TIMEOUT, well
    before connect + read timeout (its bound as a whole)."""
    pool = PollPool(url_of(server), size=1, connect_timeout=5, read_timeout=1, wait_timeout=5)
    started = time.monotonic()
    with pytest.raises(PollError) as caught:
        pool.get(f"{url_of(server)}/slow", {})
    assert "OPERATION_TIMEDOUT" in str(caught.value)
    assert 0.9 < time.monotonic() - started < 3


def test_pika_polls_map_answers_as_before(server: _Server) -> None:
    """A video, a refusal, throttling with Retry-After, a 5xx and a malformed reply, over one connection."""
    base = url_of(server)
    server.replies = {
        "/jobs/ok": (200, {}, VIDEO),
        "/jobs/gone": (404, {}, b""),
        "/jobs/busy": (429, {"Retry-After": "7"}, b""),
        "/jobs/down": (503, {"Retry-After": "3"}, b""),
        "/jobs/odd": (302, {"Location": "/jobs/ok"}, b""),
        "/jobs/garbled": (200, {}, b"<html>"),
    }
    pika = PikaClient(Settings(pikapi_base_url=base, pikapi_bearer_token="secret-token"))
    state = pika.poll("ok")
    assert (state.status, state.url, state.progress) == ("finished", "https://cdn.example.com/v.mp4", 100)
    assert server.seen[0]["authorization"] == "Bearer secret-token"
    with pytest.raises(GenerationFailed):
        pika.poll("gone")
    with pytest.raises(TransientError) as throttled:
        pika.poll("busy")
    assert (throttled.value.kind, throttled.value.retry_after) == ("throttled", 7.0)
    with pytest.raises(TransientError) as down:
        pika.poll("down")
    assert (down.value.kind, down.value.retry_after) == ("server_error", 3.0)
    with pytest.raises(TransientError) as redirected:  # not followed
        pika.poll("odd")
    assert redirected.value.kind == "server_error"
    with pytest.raises(TransientError) as garbled:
        pika.poll("garbled")
    assert garbled.value.kind == "malformed"
    assert len(server.seen) == 6 and server.connections == 1


def test_a_failed_poll_says_what_failed_without_the_url_or_token(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: the connection is refused
    monkeypatch.setenv("HTTP_PROXY", f"http://user:proxy-secret@127.0.0.1:{port}")
    pika = PikaClient(Settings(pikapi_base_url=f"http://127.0.0.1:{port}", pikapi_bearer_token="secret-token"))
    with pytest.raises(TransientError) as caught:
        pika.poll("job-1")
    assert caught.value.kind == "connection"
    assert "COULDNT_CONNECT" in str(caught.value)
    for secret in ("secret", "127.0.0.1", "job-1"):
        assert secret not in str(caught.value) and secret not in repr(caught.value.__cause__)


def test_downloads_share_one_tls_context_per_ca_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An SSL context with a CA bundle costs about 0.7 MB and a parse of the bundle: one per process."""
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    contexts = [tls_options()["ssl_context"] for _ in range(3)]
    assert all(context is tls_context(str(bundle), False) for context in contexts)
    # Only the bundle's one CA is trusted, not certifi's roots.
    assert contexts[0].cert_store_stats()["x509_ca"] == 1


def test_sessions_verify_through_the_shared_context_without_parsing_the_bundle_again(
    server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A Pika submission and a callback each have a session of their own, but not a TLS context of their own."""
    ca = trustme.CA()
    server.serve_tls(ca)
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
    base = url_of(server, "https")
    calls = SessionPerCall()
    assert [calls.post(f"{base}/callback", json={}, timeout=5).status_code for _ in range(2)] == [200, 200]
    # Two calls, two sessions, two connections: both through the one context.
    assert wrapped == ["127.0.0.1", "127.0.0.1"]
