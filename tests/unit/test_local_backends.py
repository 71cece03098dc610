"""The offline backends (caption from pixels, zoom-and-pan MP4), the safe image download, and backend settings."""

from __future__ import annotations

import io
import socket

import pytest
from PIL import Image, ImageDraw

from config import ConfigError, Settings, settings_from
from jobs.clients.local_backends import describe, render
from jobs.clients.replicate import ReplicateVideo
from jobs.fetch import MAX_REDIRECTS, FetchError, fetch, open_image
from jobs.titles import title_from_prompt
from tests.fakes.files import FileServer, image_bytes, probe, scene_bytes

# -- describe(): a caption from the image's own properties ----------------------------------------


def solid(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.mark.parametrize(
    ("size", "shape"),
    [((300, 200), "landscape"), ((200, 300), "portrait"), ((256, 256), "square"), ((105, 100), "square")],
)
def test_describe_names_the_orientation_and_size(size: tuple[int, int], shape: str) -> None:
    """The caption says landscape, portrait or square, and the pixel size."""
    caption = describe(solid(size, (128, 128, 128)))
    assert f" {shape} image ({size[0]}x{size[1]})" in caption


@pytest.mark.parametrize(
    ("grey", "light"),
    [(10, "dark"), (80, "dim"), (150, "softly lit"), (230, "bright")],
)
def test_describe_names_the_brightness(grey: int, light: str) -> None:
    """Mean luminance maps to dark, dim, softly lit or bright."""
    assert describe(solid((300, 200), (grey, grey, grey))).startswith(f"a {light} landscape image")


@pytest.mark.parametrize(
    ("colour", "name"),
    [
        ((200, 35, 35), "red"),
        ((40, 80, 200), "blue"),
        ((50, 160, 70), "green"),
        ((240, 215, 50), "yellow"),
        ((245, 245, 245), "white"),
        ((15, 15, 15), "black"),
        ((125, 55, 165), "purple"),
    ],
)
def test_describe_names_the_colour_of_a_plain_image(colour: tuple[int, int, int], name: str) -> None:
    """A one-colour image is described by that colour's name alone."""
    caption = describe(solid((300, 200), colour))
    assert f" in {name}, with a slow cinematic zoom" in caption


def test_describe_lists_the_dominant_colour_first() -> None:
    """Mostly green with a yellow band: green comes before yellow."""
    image = solid((400, 200), (50, 160, 70))
    ImageDraw.Draw(image).rectangle((300, 0, 400, 200), fill=(240, 215, 50))
    caption = describe(image)
    assert caption.index("green") < caption.index("yellow")
    assert "red" not in caption


def test_describe_names_at_most_three_colours() -> None:
    """Bands of 40, 30, 20 and 10 % give the three biggest, joined with a final "and"."""
    image = solid((400, 100), (200, 35, 35))
    draw = ImageDraw.Draw(image)
    draw.rectangle((160, 0, 279, 100), fill=(40, 80, 200))
    draw.rectangle((280, 0, 359, 100), fill=(240, 215, 50))
    draw.rectangle((360, 0, 400, 100), fill=(15, 15, 15))
    assert " in red, blue and yellow, with" in describe(image)


def test_describe_joins_two_colours_with_and() -> None:
    """Two colours read 'in green and yellow'."""
    image = solid((400, 200), (50, 160, 70))
    ImageDraw.Draw(image).rectangle((300, 0, 400, 200), fill=(240, 215, 50))
    assert " in green and yellow, with" in describe(image)


def test_describe_accepts_any_mode_after_open_image() -> None:
    """Palette and transparent images are described like any other once decoded."""
    buffer = io.BytesIO()
    Image.new("RGBA", (120, 80), (40, 80, 200, 128)).save(buffer, format="PNG")
    assert describe(open_image(buffer.getvalue())).startswith("a ")
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 35, 35)).convert("P").save(buffer, format="GIF")
    assert "red" in describe(open_image(buffer.getvalue()))


# -- title_from_prompt --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "title"),
    [
        ("a dim landscape image (300x200) in red, with a slow cinematic zoom", "Dim landscape image"),
        ("a plane flying over the sea, highly detailed", "Plane flying over sea"),
        ("An OLD lighthouse at dusk", "Old lighthouse at dusk"),
        ("the the an a", "Generated Video"),
        ("", "Generated Video"),
        ("(300x200) only sizes", "Generated Video"),
        ("1234 !!!", "Generated Video"),
    ],
)
def test_title_from_prompt(prompt: str, title: str) -> None:
    """The first four words that are not articles, before any parenthesis, capitalized."""
    assert title_from_prompt(prompt) == title


def test_title_from_prompt_keeps_accented_letters() -> None:
    """Letters outside ASCII stay part of their words (CLIP prompts name places and artists)."""
    assert title_from_prompt("a café in Zürich, trending on artstation") == "Café in zürich trending"


# -- render(): a real MP4 -----------------------------------------------------------------------


def scene(size: tuple[int, int]) -> Image.Image:
    return open_image(scene_bytes(size))


@pytest.mark.parametrize(("seconds", "fps"), [(1.0, 8), (2.5, 12)])
def test_render_makes_an_h264_mp4_of_the_configured_length(seconds: float, fps: int) -> None:
    """H.264 in yuv420p, at the given rate, with seconds x fps frames."""
    video = probe(render(scene((320, 200)), seconds, fps))
    assert (video.codec, video.pix_fmt) == ("h264", "yuv420p")
    assert video.fps == fps
    assert video.duration == pytest.approx(seconds, abs=0.05)
    assert len(video.frames) == round(seconds * fps)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((320, 200), (720, 450)), ((333, 201), (720, 434)), ((201, 333), (434, 720)), ((99, 99), (720, 720))],
)
def test_render_has_even_sides_and_a_720_pixel_long_side(size: tuple[int, int], expected: tuple[int, int]) -> None:
    """Odd image sizes become even video sides (yuv420p needs them); the long side is 720."""
    video = probe(render(scene(size), 0.5, 4))
    assert (video.width, video.height) == expected
    assert video.width % 2 == 0 and video.height % 2 == 0


def test_render_moves_the_camera() -> None:
    """Zoom and pan: first, middle and last frames all differ clearly."""
    video = probe(render(scene((320, 200)), 1.0, 8))
    first, middle, last = video.frames[0], video.frames[len(video.frames) // 2], video.frames[-1]

    def difference(a: bytes, b: bytes) -> float:
        return sum(abs(x - y) for x, y in zip(a[::97], b[::97], strict=True)) / len(a[::97])

    assert difference(first, last) > 10
    assert difference(first, middle) > 3
    assert difference(middle, last) > 3


def test_default_local_video_is_four_seconds_at_24_fps() -> None:
    """Without settings, a local video lasts 4 s at 24 fps."""
    settings = settings_from({})
    assert (settings.local_video_seconds, settings.local_video_fps) == (4.0, 24)


# -- fetch(): the URL rules on every hop, size cap, timeouts ---------------------------------------


LOCAL = ("127.0.0.1",)
PNG = image_bytes()


def get(
    url: str, allowlist: tuple[str, ...] = LOCAL, max_bytes: int = 1_000_000, read: float = 2.0, deadline: float = 30.0
) -> bytes:
    return fetch(url, max_bytes=max_bytes, timeout=(1.0, read), deadline=deadline, allowlist=allowlist)


def test_fetch_returns_the_body_of_an_allowlisted_host(files: FileServer) -> None:
    """The test server's host is allowlisted, so its image downloads."""
    assert get(files.put("/a.png", PNG, "image/png")) == PNG


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.1", "2130706433", "[::1]"])
def test_fetch_refuses_private_targets_without_connecting(files: FileServer, host: str) -> None:
    """Loopback in any notation is refused when it is not allowlisted, before any request."""
    files.put("/a.png", PNG, "image/png")
    with pytest.raises(FetchError, match="refused"):
        get(files.url("/a.png", host), allowlist=())
    assert files.hits == []


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.7", "169.254.169.254", "::1"])
def test_fetch_refuses_a_name_that_resolves_to_a_private_address(monkeypatch, address: str) -> None:
    """A public-looking name is resolved first, and a private answer is refused."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    public = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0))
    private = (family, socket.SOCK_STREAM, 6, "", (address, 0))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [public, private])
    with pytest.raises(FetchError, match="non-public"):
        get("http://images.example.com/a.png", allowlist=())


def test_fetch_follows_a_redirect_within_the_allowlist(files: FileServer) -> None:
    """Absolute and relative redirects to an allowed host are followed."""
    files.put("/a.png", PNG, "image/png")
    files.redirect("/abs", files.url("/a.png"), 301)
    files.redirect("/rel", "/a.png", 307)
    assert get(files.url("/abs")) == PNG
    assert get(files.url("/rel")) == PNG


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/a.png",
        "http://localhost:{port}/a.png",
        "http://10.0.0.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/a.png",
        "http://0x7f000001:{port}/a.png",
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.png",
    ],
)
def test_fetch_refuses_a_redirect_to_a_private_or_odd_target(files: FileServer, target: str) -> None:
    """The allowlisted host may not redirect anywhere the rules forbid: the hop is checked too."""
    files.put("/a.png", PNG, "image/png")
    files.redirect("/hop", target.format(port=files.port))
    with pytest.raises(FetchError, match="refused"):
        get(files.url("/hop"))
    assert files.hits == ["/hop"]


def test_fetch_follows_a_redirect_to_a_host_that_is_also_allowed(files: FileServer) -> None:
    """A redirect target passes when its own host is allowlisted."""
    files.put("/a.png", PNG, "image/png")
    files.redirect("/hop", files.url("/a.png", "localhost"))
    with pytest.raises(FetchError, match="refused"):
        get(files.url("/hop"))
    assert get(files.url("/hop"), allowlist=("127.0.0.1", "localhost")) == PNG


def test_fetch_stops_after_too_many_redirects(files: FileServer) -> None:
    """Five redirects are followed; a sixth is refused."""
    files.put("/a.png", PNG, "image/png")
    for n in range(MAX_REDIRECTS):
        files.redirect(f"/r{n}", f"/r{n + 1}")
    files.redirect(f"/r{MAX_REDIRECTS}", "/a.png")  # from /r1: five hops; from /r0: six
    assert get(files.url("/r1")) == PNG
    with pytest.raises(FetchError, match="redirects"):
        get(files.url("/r0"))


def test_fetch_refuses_a_redirect_loop(files: FileServer) -> None:
    """A redirect to itself ends with the redirect limit, not a hang."""
    files.redirect("/loop", "/loop")
    with pytest.raises(FetchError, match="redirects"):
        get(files.url("/loop"))
    assert files.hits_for("/loop") == MAX_REDIRECTS + 1


def test_fetch_refuses_a_declared_length_over_the_cap_without_reading_it(files: FileServer) -> None:
    """Content-Length above the cap is refused from the header alone."""
    url = files.put("/big.png", b"x" * 100, "image/png", declared_length=50_000_000)
    with pytest.raises(FetchError, match="larger than 4096 bytes"):
        get(url, max_bytes=4096)


def test_fetch_refuses_a_streamed_body_over_the_cap(files: FileServer) -> None:
    """A chunked body without Content-Length is cut off once it passes the cap."""
    url = files.put("/stream.png", b"x" * 300_000, "image/png", chunked=True)
    with pytest.raises(FetchError, match="larger than 100000 bytes"):
        get(url, max_bytes=100_000)
    assert get(files.put("/small.png", PNG, "image/png", chunked=True)) == PNG


def test_fetch_accepts_a_body_exactly_at_the_cap(files: FileServer) -> None:
    """The cap is inclusive."""
    assert get(files.put("/edge", b"y" * 5000), max_bytes=5000) == b"y" * 5000


def test_fetch_times_out_on_a_slow_server(files: FileServer) -> None:
    """An answer slower than the read timeout is a FetchError naming the timeout."""
    url = files.put("/slow.png", PNG, "image/png", delay=1.5)
    with pytest.raises(FetchError, match="Timeout"):
        get(url, read=0.3)


def test_fetch_reports_a_refused_connection(files: FileServer) -> None:
    """Nothing listening is a FetchError, not a crash."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match="could not download"):
        get(f"http://127.0.0.1:{port}/a.png")


@pytest.mark.parametrize("status", [204, 206, 299])
def test_fetch_accepts_any_2xx(files: FileServer, status: int) -> None:
    """2xx answers count as success (their body is returned)."""
    assert get(files.put(f"/s{status}", PNG, "image/png", status=status)) == (b"" if status == 204 else PNG)


@pytest.mark.parametrize("status", [302, 304, 404, 403, 500, 503])
def test_fetch_refuses_non_2xx(files: FileServer, status: int) -> None:
    """Other answers (and a redirect without Location) are a FetchError naming the status."""
    url = files.put(f"/e{status}", b"nope", "text/plain", status=status)
    with pytest.raises(FetchError, match=f"answered {status}"):
        get(url)


# -- open_image() -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"<html><body>not an image</body></html>",
        b"",
        image_bytes(fmt="PNG")[:60],
        b"%PDF-1.4 fake",
        b"GIF89a" + b"\x00" * 4,
    ],
    ids=["html", "empty", "truncated-png", "pdf", "bad-gif"],
)
def test_open_image_refuses_non_images(data: bytes) -> None:
    """Bytes that do not decode as an image are a FetchError."""
    with pytest.raises(FetchError, match="readable image"):
        open_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_open_image_decodes_common_formats_to_rgb(fmt: str) -> None:
    """PNG, JPEG, WebP and GIF decode to an RGB image of the same size."""
    image = open_image(image_bytes((90, 60), (40, 80, 200), fmt))
    assert image.mode == "RGB"
    assert image.size == (90, 60)


# -- settings of backends -----------------------------------------------------------------------------

PUBLIC = {"PUBLIC_BASE_URL": "https://i2v.example.com"}


@pytest.mark.parametrize("video", ["local", "replicate"])
def test_videos_served_by_the_service_need_public_base_url_in_production(video: str) -> None:
    """Local and Replicate videos are served from here, so production needs PUBLIC_BASE_URL; Pika does not."""
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        settings_from({"VIDEO_BACKEND": video, "ALLOW_LOCAL_BACKENDS": "1"})
    assert settings_from({"VIDEO_BACKEND": "pika"}).public_base_url == ""


def test_development_defaults_public_base_url_to_this_machine() -> None:
    """In development PUBLIC_BASE_URL defaults to 127.0.0.1 on PORT; a given value wins."""
    dev = {"I2V_ENV": "development", "VIDEO_BACKEND": "local"}
    assert settings_from(dev).public_base_url == "http://127.0.0.1:8000"
    assert settings_from({**dev, "PORT": "5123"}).public_base_url == "http://127.0.0.1:5123"
    assert settings_from({**dev, **PUBLIC}).public_base_url == "https://i2v.example.com"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CAPTION_BACKEND": "local"}, ["CAPTION_BACKEND"]),
        ({"VIDEO_BACKEND": "local"}, ["VIDEO_BACKEND"]),
        ({"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "local"}, ["CAPTION_BACKEND", "VIDEO_BACKEND"]),
        ({"VIDEO_BACKEND": "local", "ALLOW_LOCAL_BACKENDS": "0"}, ["VIDEO_BACKEND"]),
    ],
)
def test_local_backends_in_production_need_allow_local_backends(env: dict[str, str], named: list[str]) -> None:
    """Production refuses local backends; the error names the backend variables and ALLOW_LOCAL_BACKENDS."""
    with pytest.raises(ConfigError) as error:
        settings_from({**PUBLIC, **env})
    for name in [*named, "ALLOW_LOCAL_BACKENDS"]:
        assert name in str(error.value)


@pytest.mark.parametrize(
    "extra", [{"ALLOW_LOCAL_BACKENDS": "1"}, {"ALLOW_LOCAL_BACKENDS": "true"}, {"I2V_ENV": "development"}]
)
def test_local_backends_are_allowed_explicitly_or_in_development(extra: dict[str, str]) -> None:
    """ALLOW_LOCAL_BACKENDS=1 or development mode allow them."""
    settings = settings_from({**PUBLIC, "CAPTION_BACKEND": "local", "VIDEO_BACKEND": "local", **extra})
    assert (settings.caption_backend, settings.video_backend) == ("local", "local")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"I2V_ENV": "staging"}, "I2V_ENV"),
        ({"CAPTION_BACKEND": "pika"}, "CAPTION_BACKEND"),
        ({"VIDEO_BACKEND": "runway"}, "VIDEO_BACKEND"),
        ({"ALLOW_LOCAL_BACKENDS": "maybe"}, "ALLOW_LOCAL_BACKENDS"),
        ({"REPLICATE_VIDEO_MODEL": "just-a-name"}, "REPLICATE_VIDEO_MODEL"),
        ({"PUBLIC_BASE_URL": "ftp://example.com"}, "PUBLIC_BASE_URL"),
        ({"MEDIA_STORE": "s3"}, "MEDIA_STORE"),
        ({"MEDIA_TTL": "10"}, "MEDIA_TTL"),
        ({"IMAGE_MAX_BYTES": "100"}, "IMAGE_MAX_BYTES"),
        ({"LOCAL_VIDEO_SECONDS": "0.1"}, "LOCAL_VIDEO_SECONDS"),
        ({"LOCAL_VIDEO_SECONDS": "31"}, "LOCAL_VIDEO_SECONDS"),
        ({"LOCAL_VIDEO_FPS": "0"}, "LOCAL_VIDEO_FPS"),
        ({"LOCAL_VIDEO_FPS": "61"}, "LOCAL_VIDEO_FPS"),
        ({"LOCAL_VIDEO_FPS": "12.5"}, "LOCAL_VIDEO_FPS"),
    ],
)
def test_bad_backend_and_media_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    """Each malformed value stops the process with a message naming its variable."""
    with pytest.raises(ConfigError, match=name):
        settings_from(env)


def test_backend_and_media_defaults() -> None:
    """Production, replicate captions, Pika videos, disk media kept four days."""
    s = settings_from({})
    assert (s.env, s.development, s.caption_backend, s.video_backend) == ("production", False, "replicate", "pika")
    assert (s.allow_local_backends, s.replicate_video_model) == (False, "wan-video/wan-2.2-i2v-fast")
    assert (s.media_store, s.media_ttl, s.image_max_bytes) == ("disk", 4 * 24 * 3600, 20 * 1024 * 1024)
    assert settings_from({"PUBLIC_BASE_URL": "https://i2v.example.com/"}).public_base_url == "https://i2v.example.com"


TOKENS = {
    "REPLICATE_API_TOKEN": "r8_x",
    "PIKAPI_BEARER_TOKEN": "pk_x",
    "GAME_API_KEY": "game_x",
}


@pytest.mark.parametrize(
    ("env", "needed"),
    [
        ({}, ["REPLICATE_API_TOKEN", "PIKAPI_BEARER_TOKEN", "GAME_API_KEY"]),
        ({"VIDEO_BACKEND": "replicate"}, ["REPLICATE_API_TOKEN", "GAME_API_KEY"]),
        (
            {"CAPTION_BACKEND": "replicate", "VIDEO_BACKEND": "local", "ALLOW_LOCAL_BACKENDS": "1"},
            ["REPLICATE_API_TOKEN", "GAME_API_KEY"],
        ),
        (
            {"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "pika", "ALLOW_LOCAL_BACKENDS": "1"},
            ["PIKAPI_BEARER_TOKEN", "GAME_API_KEY"],
        ),
        (
            {"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "local", "ALLOW_LOCAL_BACKENDS": "1"},
            ["GAME_API_KEY"],
        ),
        ({"I2V_ENV": "development"}, ["REPLICATE_API_TOKEN", "PIKAPI_BEARER_TOKEN"]),
        ({"I2V_ENV": "development", "CAPTION_BACKEND": "replicate", "VIDEO_BACKEND": "local"}, ["REPLICATE_API_TOKEN"]),
        ({"I2V_ENV": "development", "VIDEO_BACKEND": "replicate"}, ["REPLICATE_API_TOKEN"]),
        ({"I2V_ENV": "development", "CAPTION_BACKEND": "local", "VIDEO_BACKEND": "pika"}, ["PIKAPI_BEARER_TOKEN"]),
        ({"I2V_ENV": "development", "CAPTION_BACKEND": "local", "VIDEO_BACKEND": "local"}, []),
    ],
)
def test_a_worker_needs_exactly_the_tokens_of_its_backends(env: dict[str, str], needed: list[str]) -> None:
    """Missing tokens are those of the configured backends (in production also GAME's and the media secret)."""
    env = {**PUBLIC, **env}
    assert settings_from(env).missing_worker_tokens() == needed
    assert settings_from({**env, **TOKENS}).missing_worker_tokens() == []
    for name in needed:
        others = {k: v for k, v in TOKENS.items() if k != name}
        assert settings_from({**env, **others}).missing_worker_tokens() == [name]


@pytest.mark.parametrize(
    ("model", "target", "inputs"),
    [
        ("wan-video/wan-2.2-i2v-fast", {"model": "wan-video/wan-2.2-i2v-fast"}, {"image": "U", "prompt": "P"}),
        ("kwaivgi/kling-v1.6-standard", {"model": "kwaivgi/kling-v1.6-standard"}, {"start_image": "U", "prompt": "P"}),
        ("minimax/video-01", {"model": "minimax/video-01"}, {"first_frame_image": "U", "prompt": "P"}),
        ("someone/new-model:abc123", {"version": "abc123"}, {"image": "U", "prompt": "P"}),
    ],
)
def test_replicate_video_maps_its_inputs_by_model(model: str, target: dict[str, str], inputs: dict[str, str]) -> None:
    """Each known model gets its own field names; a pinned version is created by version."""
    video = ReplicateVideo(Settings(replicate_video_model=model), api=None, keep=None)
    assert video.target == target
    produced = video.model_input("U", "P")
    assert {k: v for k, v in produced.items() if v in ("U", "P")} == inputs
