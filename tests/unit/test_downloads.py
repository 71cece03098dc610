"""The worker's downloads: pinned connections, the deadline, decoded formats, streamed video copies, no netrc."""

from __future__ import annotations

import io
import os
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme
from PIL import EpsImagePlugin, Image
from redis import Redis

from config import settings_from
from i2v_app import create_app
from jobs import fetch as fetch_module
from jobs.clients.http import make_session
from jobs.context import build_context
from jobs.errors import GenerationFailed
from jobs.fetch import FetchError, fetch, open_image
from jobs.identity import RequestIdentity
from jobs.media import MediaStore
from tests.fakes.files import FileServer, image_bytes
from tests.helpers import redis_bytes

PNG = image_bytes()
REBIND = "rebind.example"


def get(url: str, allowlist: tuple[str, ...] = (), deadline: float = 30.0, read: float = 2.0) -> bytes:
    return fetch(url, max_bytes=1_000_000, timeout=(1.0, read), deadline=deadline, allowlist=allowlist)


# -- DNS rebinding: the address checked is the address connected to ---------------------------------


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch):
    """A resolver whose answers for ``rebind.example`` change from one look-up to the next.

    Tests may only reach loopback, so 127.0.0.1 stands in for a public address (the policy is
    told so) and 127.0.0.2, where nothing listens, for the private one an attacker switches to.
    Returns the list of answers given so far, to which the test appends the answers to give.
    """
    real = socket.getaddrinfo
    plan: list[str] = []
    given: list[str] = []

    def resolve(host, port, *args, **kwargs):
        if host != REBIND:
            return real(host, port, *args, **kwargs)
        address = plan[min(len(given), len(plan) - 1)]
        given.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 80)))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    real_policy = fetch_module.is_public_address
    monkeypatch.setattr(
        fetch_module, "is_public_address", lambda address: str(address) == "127.0.0.1" or real_policy(address)
    )
    return plan, given


def test_the_connection_goes_to_the_address_that_was_checked(files: FileServer, rebinding) -> None:
    """Public for the check, private for a second look-up: the name is resolved once and that answer is used."""
    plan, given = rebinding
    plan += ["127.0.0.1", "127.0.0.2"]
    files.put("/a.png", PNG, "image/png")
    assert get(files.url("/a.png", REBIND)) == PNG
    assert given == ["127.0.0.1"]
    assert files.headers[0]["host"] == f"{REBIND}:{files.port}"  # the Host header keeps the name


@pytest.mark.parametrize("via", ["first-hop", "redirect"])
def test_a_name_whose_first_answer_is_private_is_refused_on_every_hop(files: FileServer, rebinding, via: str) -> None:
    """Private for the check (public afterwards) is refused before any request, on a redirect hop too."""
    plan, given = rebinding
    plan += ["127.0.0.2", "127.0.0.1"]
    files.put("/a.png", PNG, "image/png")
    url = files.url("/a.png", REBIND)
    if via == "redirect":
        url = files.redirect("/hop", url)
    with pytest.raises(FetchError, match="non-public"):
        get(url, allowlist=("127.0.0.1",))
    assert given == ["127.0.0.2"]
    assert files.hits == ([] if via == "first-hop" else ["/hop"])


class TLSImageHost(ThreadingHTTPServer):
    """An https server on 127.0.0.1 with a certificate for one name; it records the SNI names it is sent."""

    daemon_threads = True

    def __init__(self, ca: trustme.CA, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _TLSHandler)
        self.names: list[str | None] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(name).configure_cert(context)
        context.sni_callback = lambda _sock, server_name, _context: self.names.append(server_name)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # refused handshakes are part of the tests


class _TLSHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Start an https image host for a given name, trusted through REQUESTS_CA_BUNDLE."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    servers: list[TLSImageHost] = []

    def start(name: str) -> TLSImageHost:
        server = TLSImageHost(ca, name)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_pinned_https_connection_keeps_sni_and_the_certificate_check_on_the_name(tls_host, rebinding) -> None:
    """Connected to the checked address, TLS still sends the name as SNI and verifies the certificate for it."""
    plan, given = rebinding
    plan += ["127.0.0.1", "127.0.0.2"]
    server = tls_host(REBIND)
    assert get(f"https://{REBIND}:{server.server_address[1]}/a.png") == PNG
    assert given == ["127.0.0.1"]
    assert server.names == [REBIND]
    wrong = tls_host("other.example")
    given.clear()  # a fresh look-up answers the checked address again
    with pytest.raises(FetchError, match="SSLError"):
        get(f"https://{REBIND}:{wrong.server_address[1]}/a.png")


# -- the deadline -----------------------------------------------------------------------------------


def test_a_slow_drip_ends_at_the_download_deadline(files: FileServer) -> None:
    """100 bytes every 0.2 s never trips the read timeout; the whole download still stops at its deadline."""
    url = files.put("/drip.png", os.urandom(10_000), "image/png", drip=0.2)  # 20 s in all
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 1 s"):
        get(url, allowlist=("127.0.0.1",), deadline=1.0, read=5.0)
    assert time.monotonic() - started < 10


# -- decoded formats --------------------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 35, 35)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO", "PPM", "TGA"])
def test_only_png_jpeg_webp_and_gif_are_decoded(fmt: str) -> None:
    """Formats Pillow could decode but the service does not take are refused unread."""
    with pytest.raises(FetchError, match="readable image"):
        open_image(_encoded(fmt))


def test_an_eps_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostScript is not opened at all, so Pillow never runs Ghostscript on a user's bytes."""
    ran: list[object] = []

    def ghostscript(*args: object, **kwargs: object) -> None:
        ran.append(args)
        raise OSError("Ghostscript would run here")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n%%EOF\n"
    with pytest.raises(FetchError, match="readable image"):
        open_image(eps)
    assert ran == []


# -- the video copy: streamed into the store, never whole in memory -----------------------------------

VIDEO = os.urandom(24 * 1024 * 1024)


def keep_settings(tmp_path: Path, redis_url: str, store: str, **env: str):
    return settings_from(
        {
            "REDIS_URL": redis_url,
            "REPLICATE_API_TOKEN": "r8_test",
            "CAPTION_BACKEND": "replicate",
            "VIDEO_BACKEND": "replicate",
            "MEDIA_STORE": store,
            "MEDIA_DIR": str(tmp_path / "media"),
            "PUBLIC_BASE_URL": "https://i2v.example.com",
            "IMAGE_HOST_ALLOWLIST": "127.0.0.1",
            "I2V_AUTH_DISABLED": "1",
            **env,
        }
    )


def peak_bytes(action) -> int:
    """The most memory Python held at once (above what it held before) while ``action`` ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("store", ["disk", "redis"])
def test_a_video_copy_streams_into_the_store(
    files: FileServer, redis: Redis, redis_url: str, tmp_path: Path, store: str
) -> None:
    """A 24 MiB provider video is copied with a few MiB of memory, and stored byte for byte."""
    settings = keep_settings(tmp_path, redis_url, store)
    context = build_context(settings, redis)
    url = files.put("/out.mp4", VIDEO, "video/mp4")
    name = RequestIdentity("", f"stream-{store}").media_name("test-secret")
    kept: list[str] = []
    peak = peak_bytes(lambda: kept.append(context.video.keep(url, name)))
    assert kept == [context.media.url(name)]
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"
    stored = redis_bytes(context.media, name) if store == "redis" else context.media.path(name).read_bytes()
    assert stored == VIDEO


@pytest.mark.parametrize(
    ("store", "failure"), [("disk", "deadline"), ("disk", "cut-off"), ("redis", "deadline"), ("redis", "cut-off")]
)
def test_a_failed_video_copy_leaves_nothing_behind(
    files: FileServer, redis: Redis, redis_url: str, tmp_path: Path, store: str, failure: str
) -> None:
    """A copy cut off by the deadline (5 x DOWNLOAD_DEADLINE) or by the server stores nothing, not even a part."""
    context = build_context(keep_settings(tmp_path, redis_url, store, DOWNLOAD_DEADLINE="1"), redis)
    if failure == "deadline":
        url, reason = files.put("/slow.mp4", os.urandom(2_000_000), "video/mp4", drip=0.001), "longer than 5 s"
    else:  # 3 MiB of a promised 4 MiB, then the connection closes
        body, promised = os.urandom(3 * 1024 * 1024), 4 * 1024 * 1024
        url = files.put("/cut.mp4", body, "video/mp4", declared_length=promised, headers={"Connection": "close"})
        reason = "could not download"
    name = RequestIdentity("", f"cut-{store}").media_name("test-secret")
    with pytest.raises(GenerationFailed, match=reason):
        context.video.keep(url, name)
    assert not context.media.exists(name)
    assert redis.keys("*") == []
    if store == "disk":
        assert list((tmp_path / "media").iterdir()) == []


def test_the_web_serves_a_range_of_a_redis_video_without_loading_it(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """MEDIA_STORE=redis: a Range request reads only its slice, not the 24 MiB video."""
    settings = keep_settings(tmp_path, redis_url, "redis")
    name = RequestIdentity("", "served").media_name("test-secret")
    MediaStore(settings, redis).save(name, VIDEO)
    client = create_app(settings).test_client()
    answers = []
    peak = peak_bytes(
        lambda: answers.append(client.get(f"/media/{name}.mp4", headers={"Range": "bytes=20000000-20000099"}))
    )
    resp = answers[0]
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes 20000000-20000099/{len(VIDEO)}"
    assert resp.data == VIDEO[20_000_000:20_000_100]
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"


# -- ~/.netrc is never read -------------------------------------------------------------------------


@pytest.fixture
def netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A netrc with credentials for the test server, where requests would look for it."""
    path = tmp_path / "netrc"
    path.write_text("machine 127.0.0.1 login leaked password leaked\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(path.read_text())


def test_provider_sessions_send_no_netrc_credentials(files: FileServer, netrc: None) -> None:
    """A request without auth gets no Authorization header from ~/.netrc."""
    with make_session() as session:
        assert session.get(files.put("/a", b"ok"), timeout=5).status_code == 200
    assert "authorization" not in files.headers[0]


def test_provider_sessions_send_no_netrc_credentials_after_a_redirect(files: FileServer, netrc: None) -> None:
    """Following a redirect does not look the new URL up in ~/.netrc either."""
    files.put("/a", b"ok")
    with make_session() as session:
        assert session.get(files.redirect("/r", "/a"), timeout=5).text == "ok"
    assert files.hits == ["/r", "/a"]
    assert [h.get("authorization") for h in files.headers] == [None, None]


def test_provider_sessions_still_read_the_proxy_and_ca_bundle_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cutting netrc out keeps HTTP(S)_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE working."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    for name in ("NO_PROXY", "no_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with make_session() as session:
        merged = session.merge_environment_settings("https://api.example.com/x", {}, None, None, None)
    assert merged["proxies"]["https"] == "http://127.0.0.1:3128"
    assert merged["verify"] == str(bundle)
