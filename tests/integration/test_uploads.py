"""Image uploads (``POST /api/v1/uploads``, ``GET /uploads/<name>``) on a real Redis and a real gunicorn."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image, PngImagePlugin
from redis import Redis
from schemathesis import GenerationMode

from config import settings_from
from i2v_app import create_app
from jobs.media import UPLOAD_DIR
from launch import free_port
from tests.api import Api
from tests.fuzzing import CHECKS, INVALID, VALID, fuzz, load
from tests.helpers import ServiceProcess, wait_for

BASE = "http://127.0.0.1:9"  # nothing listens there: an upload is never read back over HTTP
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
GPS_IFD = 0x8825


def local_env(service_env: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    """Offline backends (which read uploads from the media store) with media under tmp_path."""
    return {
        **service_env,
        "CAPTION_BACKEND": "local",
        "VIDEO_BACKEND": "local",
        "ALLOW_LOCAL_BACKENDS": "1",
        "PUBLIC_BASE_URL": BASE,
        "MEDIA_DIR": str(tmp_path / "media"),
        "LOCAL_VIDEO_SECONDS": "1",
        "LOCAL_VIDEO_FPS": "8",
        **extra,
    }


def make_client(env: dict[str, str]) -> FlaskClient:
    app: Flask = create_app(settings_from(env))
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture
def client(service_env: dict[str, str], tmp_path: Path) -> FlaskClient:
    return make_client(local_env(service_env, tmp_path))


def picture(fmt: str = "PNG", size: tuple[int, int] = (64, 48), **options: object) -> bytes:
    image = Image.new("RGB", size, (200, 80, 40))
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def noise(size: tuple[int, int]) -> bytes:
    """A PNG of random pixels: it stays about as large when re-encoded."""
    out = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(out, format="PNG")
    return out.getvalue()


def with_gps(fmt: str) -> bytes:
    """A picture carrying camera and GPS EXIF, as a phone writes it."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "PhoneModel"  # Model
    gps = exif.get_ifd(GPS_IFD)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 29.0)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.0)
    data = picture(fmt, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD), "the test image must carry GPS"
    return data


def upload(client: FlaskClient, data: bytes, filename: str = "photo.png", **headers: str):
    return client.post(
        "/api/v1/uploads",
        data={"file": (io.BytesIO(data), filename)},
        content_type="multipart/form-data",
        headers=headers,
    )


def served(client: FlaskClient, url: str):
    assert url.startswith(f"{BASE}/uploads/")
    return client.get(url.removeprefix(BASE))


def assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    return resp.get_json()


# -- the happy paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["disk", "redis"])
def test_multipart_upload_is_stored_and_served_with_its_decoded_type(
    service_env: dict[str, str], tmp_path: Path, store: str
) -> None:
    client = make_client(local_env(service_env, tmp_path, MEDIA_STORE=store))
    resp = upload(client, picture("PNG"), filename="whatever.jpg")  # the name does not count
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"url", "expires_at"}
    assert ISO.fullmatch(body["expires_at"])
    assert re.fullmatch(rf"{re.escape(BASE)}/uploads/[0-9a-f]{{40}}\.png", body["url"])
    assert resp.headers["Location"] == body["url"]
    got = served(client, body["url"])
    assert got.status_code == 200
    assert got.mimetype == "image/png"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert Image.open(io.BytesIO(got.get_data())).size == (64, 48)
    # Two uploads of the same bytes get two unguessable names.
    assert upload(client, picture("PNG")).get_json()["url"] != body["url"]


@pytest.mark.parametrize(("fmt", "mimetype"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_a_raw_image_body_is_taken_too(client: FlaskClient, fmt: str, mimetype: str) -> None:
    resp = client.post("/api/v1/uploads", data=picture(fmt), content_type="image/octet-guess")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    got = served(client, resp.get_json()["url"])
    assert got.mimetype == mimetype
    assert Image.open(io.BytesIO(got.get_data())).format == fmt


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_gps_and_camera_metadata_are_stripped(client: FlaskClient, fmt: str) -> None:
    resp = upload(client, with_gps(fmt))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    stored = served(client, resp.get_json()["url"]).get_data()
    image = Image.open(io.BytesIO(stored))
    assert image.format == fmt
    assert not image.getexif()
    assert b"PhoneModel" not in stored
    assert b"Exif" not in stored


def test_a_colour_profile_and_text_chunks_are_dropped(client: FlaskClient) -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "taken at 12 Secret Lane")
    original = picture("PNG", icc_profile=b"not-a-real-profile-but-kept-as-is", pnginfo=text)
    assert "icc_profile" in Image.open(io.BytesIO(original)).info
    resp = upload(client, original)
    stored = served(client, resp.get_json()["url"]).get_data()
    assert "icc_profile" not in Image.open(io.BytesIO(stored)).info
    assert b"Secret Lane" not in stored


def test_the_exif_orientation_is_applied_before_it_is_dropped(client: FlaskClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    resp = upload(client, picture("JPEG", size=(80, 40), exif=exif.tobytes()))
    image = Image.open(io.BytesIO(served(client, resp.get_json()["url"]).get_data()))
    assert image.size == (40, 80)


def test_an_upload_url_is_accepted_as_image_id_and_the_worker_reads_it_from_the_store(
    service_env: dict[str, str], tmp_path: Path, start_process
) -> None:
    env = local_env(service_env, tmp_path, CALLBACK_API_URL=service_env["CALLBACK_API_URL"])
    client = make_client(env)
    url = upload(client, picture("PNG", size=(320, 200))).get_json()["url"]
    Api(client).submit("from-upload", url, expect=202)
    start_process("worker", **env)
    done = wait_for(
        lambda: (b := client.get("/api/v1/i2v/from-upload").get_json())["status"] in ("completed", "failed") and b,
        timeout=60,
    )
    assert done["status"] == "completed", done
    assert "320x200" in done["prompt"]


# -- refusals -----------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` pixels."""
    data = bytearray(picture("PNG", size=(1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(picture("PNG")[:60], 422, id="truncated-png"),
        pytest.param(b"just some text, honestly", 422, id="text-named-png"),
        pytest.param(b"", 422, id="zero-bytes"),
        pytest.param(png_claiming(100_000, 100_000), 422, id="huge-dimensions-tiny-file"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 422, id="eps"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", 422, id="svg"),
        pytest.param(picture("BMP"), 422, id="bmp"),
        pytest.param(os.urandom(4096), 422, id="noise"),
    ],
)
def test_a_bad_file_is_a_4xx_problem_never_a_5xx(client: FlaskClient, data: bytes, status: int) -> None:
    body = assert_problem(upload(client, data, filename="image.png"), status)
    assert body["detail"]


def test_bad_requests_around_the_file(client: FlaskClient) -> None:
    assert_problem(client.post("/api/v1/uploads", data="hello", content_type="text/plain"), 415)
    assert_problem(client.post("/api/v1/uploads", json={"file": "x"}), 415)
    missing = client.post("/api/v1/uploads", data={"other": (io.BytesIO(picture()), "a.png")})
    assert "file" in assert_problem(missing, 422)["detail"]


def test_uploads_have_their_own_size_cap_and_every_other_route_keeps_64_kib(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    client = make_client(local_env(service_env, tmp_path, UPLOAD_MAX_BYTES="200000"))
    big = picture("PNG", size=(200, 200), compress_level=0)
    assert 70_000 < len(big) < 200_000
    assert upload(client, big).status_code == 201
    assert_problem(client.post("/api/v1/uploads", data=os.urandom(300_000), content_type="image/png"), 413)
    too_big = picture("PNG", size=(300, 300), compress_level=0)
    assert len(too_big) > 200_000
    assert_problem(upload(client, too_big), 413)
    resp = client.post(
        "/api/v1/i2v", data=b"{" + b" " * 70_000 + b"}", headers={"x-request-id": "x"}, content_type="application/json"
    )
    assert_problem(resp, 413)


def test_each_key_has_a_byte_quota(service_env: dict[str, str], tmp_path: Path) -> None:
    keys = "upload-key-aaaaaaaaaaaa,upload-key-bbbbbbbbbbbb"
    env = local_env(service_env, tmp_path, UPLOAD_QUOTA_BYTES="3000", I2V_AUTH_DISABLED="0", I2V_API_KEYS=keys)
    client = make_client(env)
    a = {"Authorization": "Bearer upload-key-aaaaaaaaaaaa"}
    b = {"Authorization": "Bearer upload-key-bbbbbbbbbbbb"}
    assert_problem(upload(client, picture()), 401)
    one = picture("PNG", size=(16, 16))
    assert len(one) < 1500
    assert upload(client, one, **a).status_code == 201
    assert upload(client, one, **a).status_code == 201
    body = assert_problem(upload(client, noise((40, 40)), **a), 413)
    assert "UPLOAD_QUOTA_BYTES" in body["detail"]
    assert upload(client, one, **b).status_code == 201  # another key's quota is its own


def test_an_expired_upload_gives_its_bytes_back(service_env: dict[str, str], tmp_path: Path, redis: Redis) -> None:
    """A key uploading every day is held to what it holds now, not to everything it ever uploaded."""
    client = make_client(local_env(service_env, tmp_path, UPLOAD_QUOTA_BYTES="4000"))
    first = upload(client, noise((30, 30)))
    assert first.status_code == 201
    assert upload(client, noise((30, 30))).status_code == 413
    held = "i2v:uploads:"  # no authentication: the owner is ""
    [member] = redis.zrange(held, 0, -1)
    redis.zadd(held, {member: time.time() - 1})  # the first upload's UPLOAD_TTL has passed
    assert upload(client, noise((30, 30))).status_code == 201
    [remaining] = redis.zrange(held, 0, -1)
    assert remaining != member
    assert int(redis.get("i2v:upload-bytes:")) == int(remaining.decode().rsplit(":", 1)[1])


def test_uploads_count_against_the_rate_limit(service_env: dict[str, str], tmp_path: Path) -> None:
    client = make_client(local_env(service_env, tmp_path, RATE_LIMIT="2/minute"))
    assert upload(client, picture()).status_code == 201
    assert upload(client, picture()).status_code == 201
    assert_problem(upload(client, picture()), 429)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"CAPTION_BACKEND": "replicate"}, id="replicate-captions"),
        pytest.param({"VIDEO_BACKEND": "pika"}, id="pika"),
        pytest.param({"VIDEO_BACKEND": "replicate", "PUBLIC_BASE_URL": "http://10.1.2.3"}, id="private-address"),
    ],
)
def test_uploads_are_refused_when_a_provider_could_not_fetch_them(
    service_env: dict[str, str], tmp_path: Path, extra: dict[str, str]
) -> None:
    client = make_client(local_env(service_env, tmp_path, **extra))
    body = assert_problem(upload(client, picture()), 409)
    assert "PUBLIC_BASE_URL" in body["detail"]
    base = extra.get("PUBLIC_BASE_URL", BASE)
    resp = Api(client).submit("names-an-upload", f"{base}/uploads/{'a' * 40}.png")
    assert "PUBLIC_BASE_URL" in assert_problem(resp, 422)["detail"]


def test_a_public_base_url_lets_remote_providers_have_uploads(service_env: dict[str, str], tmp_path: Path) -> None:
    client = make_client(
        local_env(service_env, tmp_path, VIDEO_BACKEND="pika", PUBLIC_BASE_URL="https://i2v.example.com")
    )
    url = upload(client, picture()).get_json()["url"]
    assert url.startswith("https://i2v.example.com/uploads/")
    Api(client).submit("remote", url, expect=202)


def test_an_unknown_or_expired_upload_is_refused_and_no_longer_served(
    api: Api, client: FlaskClient, tmp_path: Path, service_env: dict[str, str]
) -> None:
    assert_problem(api.submit("nope", f"{BASE}/uploads/{'b' * 40}.png"), 422)
    url = upload(client, picture()).get_json()["url"]
    name = url.rsplit("/", 1)[1]
    path = tmp_path / "media" / UPLOAD_DIR / name
    day_ago = time.time() - 25 * 3600
    os.utime(path, (day_ago, day_ago))
    assert served(client, url).status_code == 404
    assert "expired" in assert_problem(api.submit("late", url), 422)["detail"]
    assert client.get("/uploads/..%2f..%2fetc%2fpasswd").status_code == 404


def test_the_spec_documents_uploads(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/api/v1/uploads"]["post"]
    assert "201" in operation["responses"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert set(spec["components"]["schemas"]["UploadReply"]["properties"]) == {"url", "expires_at"}


@pytest.mark.parametrize("mode", [VALID, INVALID], ids=["valid", "invalid"])
def test_uploads_fuzzed_against_the_spec_get_no_5xx(
    service_env: dict[str, str], tmp_path: Path, redis: Redis, mode: GenerationMode
) -> None:
    """Generated bodies reach the decoding (local backends, so uploads are on): 4xx at worst, as documented."""
    app = create_app(settings_from(local_env(service_env, tmp_path)))
    seen = fuzz(load(app, "/api/v1/uploads")["/api/v1/uploads"]["POST"], mode, redis, CHECKS)
    assert seen and all(code < 500 for code in seen)


# -- a slow client against the real web process -------------------------------------------------


def start_web(start_process: Callable[..., ServiceProcess], env: dict[str, str]) -> int:
    """The real ``web`` process with ``env`` and one gunicorn worker on a free port; the port, once it answers."""
    port = free_port()
    start_process("web", HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1", **env)
    wait_for(lambda: _up(port), timeout=30, message="the web process")
    return port


def test_a_slow_client_gets_408_within_the_read_deadline(
    service_env: dict[str, str], tmp_path: Path, start_process
) -> None:
    port = start_web(start_process, local_env(service_env, tmp_path, UPLOAD_READ_DEADLINE="1"))
    body = picture("PNG")
    for trickle in (True, False):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
            started = time.monotonic()
            sock.settimeout(0.3)
            reply = b""
            for piece in body[10:]:
                with contextlib.suppress(TimeoutError):
                    reply += sock.recv(4096)
                if reply or time.monotonic() - started > 8:
                    break
                if trickle:
                    sock.sendall(bytes([piece]))
            sock.settimeout(5)
            while b"\r\n\r\n" not in reply:
                more = sock.recv(4096)
                if not more:
                    break
                reply += more
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert time.monotonic() - started < 5
    # The worker is free again at once.
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def test_a_chunked_upload_is_read_up_to_its_cap_by_the_real_web_process(
    service_env: dict[str, str], tmp_path: Path, start_process
) -> None:
    """Without a Content-Length the cap still holds: what is sent is counted as it arrives."""
    port = start_web(start_process, local_env(service_env, tmp_path, UPLOAD_MAX_BYTES="100000"))
    url = f"http://127.0.0.1:{port}/api/v1/uploads"

    def chunks(data: bytes):
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    fits = requests.post(
        url,
        data=chunks(picture("PNG", size=(150, 150), compress_level=0)),
        timeout=10,
        headers={"Content-Type": "image/png"},
    )
    assert fits.status_code == 201, fits.text
    assert fits.request.headers.get("Transfer-Encoding") == "chunked"
    too_big = requests.post(url, data=chunks(noise((300, 300))), timeout=10, headers={"Content-Type": "image/png"})
    assert too_big.status_code == 413, too_big.text
    assert too_big.headers["Content-Type"] == "application/problem+json"
    assert "UPLOAD_MAX_BYTES" in too_big.json()["detail"]


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
