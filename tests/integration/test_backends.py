"""Caption and video backends on a real RQ worker: local (offline), Replicate video kept in the media store."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from config import settings_from
from i2v_app import create_app
from jobs.identity import RequestIdentity
from jobs.media import REDIS_PREFIX
from jobs.titles import title_from_prompt
from tests.api import Api
from tests.fakes import FakeReplicate, Fakes, ModelSpec
from tests.fakes.files import FileServer, image_bytes, mp4_bytes, probe, scene_bytes
from tests.helpers import MEDIA_SECRET, wait_for

BASE = "https://i2v.example.com"
MEDIA_URL = re.compile(re.escape(BASE) + r"/media/([0-9a-f]{40})\.mp4")
WAN = ModelSpec(
    owner="wan-video",
    name="wan-2.2-i2v-fast",
    version="9c49fe36c8a6ad8b1a2c1a9a4ae9a3d3fb7e3c1c05e4b0b5d2d0b1f3a4e5c6d7",
    properties={
        "image": {"type": "string", "format": "uri", "title": "Image", "x-order": 0},
        "prompt": {"type": "string", "title": "Prompt", "x-order": 1},
    },
    required=("image", "prompt"),
    default_output=None,
    output_schema={"type": "string", "format": "uri", "title": "Output"},
)
#: The data of a FAILED callback.
FAILED = {"addToInventory": False, "status": "FAILED", "output": None}
#: A deadline long enough for a crashed worker's heartbeat to lapse and the request still to finish.
SLOW = {"INITIAL_WAIT_TIME": "0.2", "MAX_CHECK_TIME": "60"}


@pytest.fixture
def backend_env(tmp_path: Path) -> dict[str, str]:
    """Local backends allowed in production, images from 127.0.0.1, short videos, media under tmp_path."""
    return {
        "CAPTION_BACKEND": "local",
        "VIDEO_BACKEND": "local",
        "ALLOW_LOCAL_BACKENDS": "1",
        "IMAGE_HOST_ALLOWLIST": "127.0.0.1",
        "PUBLIC_BASE_URL": BASE,
        "MEDIA_DIR": str(tmp_path / "media"),
        "LOCAL_VIDEO_SECONDS": "1",
        "LOCAL_VIDEO_FPS": "8",
    }


@pytest.fixture
def service(start_process, service_env: dict[str, str], backend_env: dict[str, str], fakes: Fakes):
    """Start workers and build the web app with the same settings: ``service(**overrides)`` → its Api."""

    def start(workers: int = 1, **overrides: str) -> Api:
        env = {**backend_env, **overrides}
        for _ in range(workers):
            start_process("worker", **env)
        app = create_app(settings_from({**service_env, **env}))
        app.config["TESTING"] = True
        return Api(app.test_client(), fakes.game)

    return start


def served_video(client: FlaskClient, url: str) -> bytes:
    """Fetch a media URL from the app: 200 video/mp4, and a Range request answered 206."""
    path = url.removeprefix(BASE)
    whole = client.get(path)
    assert whole.status_code == 200
    assert whole.mimetype == "video/mp4"
    part = client.get(path, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(whole.data)}"
    assert part.data == whole.data[:100]
    return whole.data


def test_local_caption_and_local_video_end_to_end(service, fakes, files: FileServer, tmp_path: Path, redis) -> None:
    """Offline backends: one COMPLETED callback with our media URL, a playable MP4, a title from the prompt."""
    api = service()
    image = files.put("/red.png", image_bytes((320, 200), (200, 35, 35)), "image/png")
    api.submit("local-1", image, expect=202)
    record = api.settled("local-1")
    assert record["status"] == "completed", record
    assert record["prompt"].startswith("a dim landscape image (320x200) in red")
    data = api.one_callback("local-1", grace=0.3)["data"]
    assert data["status"] == "COMPLETED"
    output = data["output"]
    match = MEDIA_URL.fullmatch(output["url"])
    assert match, output["url"]
    assert match[1] == RequestIdentity("", "local-1").media_name(MEDIA_SECRET)
    # Made once and stored in the record, so that a new MEDIA_NAME_SECRET never renames it.
    assert redis.hget(RequestIdentity("", "local-1").record_key, "media_name") == match[1].encode()
    assert output["url"] == record["video_url"]
    assert output["title"] == record["title"] == title_from_prompt(record["prompt"]) == "Dim landscape image"
    video = probe(served_video(api.client, output["url"]))
    assert (video.codec, video.fps, len(video.frames)) == ("h264", 8, 8)
    assert video.duration == pytest.approx(1.0, abs=0.05)
    assert (tmp_path / "media" / f"{match[1]}.mp4").is_file()
    assert record["provider"]["name"] == "local"
    assert fakes.replicate.requests == [] and fakes.pika.requests == []


@pytest.mark.parametrize(
    ("case", "mentions"),
    [("html", "readable image"), ("missing", "404"), ("too-large", "larger than"), ("to-private", "refused")],
)
def test_an_image_url_that_gives_no_image_is_caption_failed(
    service, fakes, files: FileServer, tmp_path: Path, case: str, mentions: str
) -> None:
    """Not an image, not found, over IMAGE_MAX_BYTES, or redirected to a private address: caption_failed."""
    api = service(IMAGE_MAX_BYTES="4096")
    urls = {
        "html": files.put("/page", b"<html><body>hello</body></html>", "text/html"),
        "missing": files.url("/nothing.png"),
        "too-large": files.put("/huge.png", os.urandom(5000), "image/png"),
        "to-private": files.redirect("/hop.png", "http://10.0.0.1/a.png"),
    }
    api.submit(f"bad-{case}", urls[case], expect=202)
    record = api.settled(f"bad-{case}")
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "caption_failed"
    assert mentions in record["error"]["message"]
    assert api.one_callback(f"bad-{case}", grace=0.3)["data"] == FAILED
    assert not (tmp_path / "media").exists() or not any((tmp_path / "media").iterdir())


def test_an_image_that_drips_fails_at_the_download_deadline(service, fakes, files: FileServer) -> None:
    """DOWNLOAD_DEADLINE=1: 100 bytes every 0.2 s (20 s in all) never trips a read timeout; the deadline ends it."""
    api = service(DOWNLOAD_DEADLINE="1")
    started = time.monotonic()
    api.submit("drip", files.put("/drip.png", os.urandom(10_000), "image/png", drip=0.2), expect=202)
    record = api.settled("drip", timeout=15)
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "caption_failed"
    assert "longer than 1 s" in record["error"]["message"]
    assert time.monotonic() - started < 15
    assert api.one_callback("drip", grace=0.3)["data"]["status"] == "FAILED"


def test_replicate_caption_with_local_video(service, fakes, files: FileServer) -> None:
    """The CLIP caption drives a local video; the worker runs without a Pika token."""
    api = service(CAPTION_BACKEND="replicate", PIKAPI_BEARER_TOKEN="")
    image = files.put("/scene.jpg", scene_bytes((300, 400), "JPEG"), "image/jpeg")
    api.submit("cap-replicate", image, expect=202)
    record = api.settled("cap-replicate")
    assert record["status"] == "completed", record
    assert fakes.replicate.creates == [{"image": image, "clip_model_name": "ViT-L-14/openai", "mode": "best"}]
    assert fakes.pika.requests == []
    data = api.one_callback("cap-replicate", grace=0.3)["data"]
    assert data["output"]["title"] == "Plane flying over sea"
    assert MEDIA_URL.fullmatch(data["output"]["url"])
    video = probe(served_video(api.client, data["output"]["url"]))
    assert (video.width, video.height) == (540, 720)


@pytest.fixture
def wan(fake_replicate: FakeReplicate, files: FileServer, fakes) -> str:
    """The Wan image-to-video model at the fake, whose output is an MP4 on the file server; returns its URL."""
    url = files.put("/provider/output.mp4", mp4_bytes(), "video/mp4")
    fake_replicate.add_model(WAN)
    fake_replicate.output = url
    return url


REPLICATE_VIDEO = {"VIDEO_BACKEND": "replicate", "PIKAPI_BEARER_TOKEN": ""}


def replicate_video(service, **overrides: str) -> Api:
    return service(**REPLICATE_VIDEO, **overrides)


def test_replicate_video_is_copied_into_the_media_store(service, fakes, files: FileServer, wan: str) -> None:
    """VIDEO_BACKEND=replicate: one prediction with image and prompt; the callback carries our URL, not theirs."""
    api = replicate_video(service)
    image = files.put("/blue.png", image_bytes((200, 200), (40, 80, 200)), "image/png")
    api.submit("rep-video", image, expect=202)
    record = api.settled("rep-video")
    assert record["status"] == "completed", record
    assert fakes.replicate.creates == [{"image": image, "prompt": record["prompt"]}]
    [create] = fakes.replicate.requests_for("create")
    assert create.path == "/v1/models/wan-video/wan-2.2-i2v-fast/predictions"
    assert record["provider"]["name"] == "replicate"
    assert record["provider"]["job_id"] in fakes.replicate.predictions
    data = api.one_callback("rep-video", grace=0.3)["data"]
    assert (
        data["output"]["url"]
        == f"{BASE}/media/{RequestIdentity('', 'rep-video').media_name(MEDIA_SECRET)}.mp4"
        == record["video_url"]
    )
    assert data["output"]["title"] == title_from_prompt(record["prompt"]) == "Dim square image"
    assert served_video(api.client, data["output"]["url"]) == files.entries["/provider/output.mp4"].body
    assert files.hits_for("/provider/output.mp4") == 1
    assert fakes.pika.requests == []


def test_the_kept_video_outlives_replicate_removing_its_output(service, fakes, files: FileServer, wan: str) -> None:
    """Replicate deletes outputs an hour after the end (here: 2 s); the callback's URL still serves the video."""
    fakes.replicate.retention = 2.0
    api = replicate_video(service)
    image = files.put("/green.png", image_bytes((200, 200), (40, 200, 80)), "image/png")
    api.submit("rep-removed", image, expect=202)
    record = api.settled("rep-removed")
    assert record["status"] == "completed", record
    original = files.entries["/provider/output.mp4"].body

    prediction_id = record["provider"]["job_id"]
    wait_for(
        lambda: fakes.replicate.prediction(prediction_id)["data_removed"], timeout=15, message="the output removed"
    )
    files.error("/provider/output.mp4", 404)

    assert fakes.replicate.prediction(prediction_id)["output"] is None
    data = api.one_callback("rep-removed", grace=0.3)["data"]
    assert served_video(api.client, data["output"]["url"]) == original


def test_failed_replicate_video_is_generation_failed(service, fakes, files: FileServer, wan: str) -> None:
    """A failed video prediction ends the request with generation_failed and one FAILED callback."""
    fakes.replicate.outcome = "failed"
    api = replicate_video(service)
    api.submit("rep-failed", files.put("/a.png", image_bytes(), "image/png"), expect=202)
    record = api.settled("rep-failed")
    assert (record["status"], record["error"]["code"]) == ("failed", "generation_failed")
    assert api.one_callback("rep-failed", grace=0.3)["data"]["status"] == "FAILED"
    assert len(fakes.replicate.creates) == 1


def test_restarted_worker_resumes_the_same_video_prediction(
    service, start_process, fakes, files: FileServer, wan: str, backend_env: dict[str, str]
) -> None:
    """A worker killed while the video renders is replaced; the same prediction is awaited, never a second one."""
    fakes.replicate.duration = 3
    env = {**backend_env, **REPLICATE_VIDEO, **SLOW}
    api = service(workers=0, **REPLICATE_VIDEO, **SLOW)
    start_process("scheduler", **env)
    first = start_process("worker", **env)
    api.submit("rep-restart", files.put("/a.png", image_bytes(), "image/png"), expect=202)
    prediction = api.provider_job("rep-restart")
    first.kill()
    assert fakes.game.callbacks_for("rep-restart") == []
    start_process("worker", **env)
    # The killed execution is found once its heartbeat lapses (about 16 s with these timings).
    record = api.settled("rep-restart", timeout=40)
    assert record["status"] == "completed", record
    assert record["provider"]["job_id"] == prediction
    assert len(fakes.replicate.creates) == 1
    assert fakes.replicate.cancels == []
    assert (
        api.one_callback("rep-restart", grace=0.3)["data"]["output"]["url"]
        == f"{BASE}/media/{RequestIdentity('', 'rep-restart').media_name(MEDIA_SECRET)}.mp4"
    )


def test_cancel_during_a_replicate_video_cancels_the_prediction(service, fakes, files: FileServer, wan: str) -> None:
    """DELETE while the video renders: the prediction is canceled at Replicate and one FAILED callback goes out."""
    fakes.replicate.outcome = "never"
    api = replicate_video(service, **SLOW)
    api.submit("rep-cancel", files.put("/a.png", image_bytes(), "image/png"), expect=202)
    prediction = api.provider_job("rep-cancel")
    assert api.cancel("rep-cancel").status_code == 202
    wait_for(lambda: fakes.replicate.cancels, timeout=10, message="the cancel at Replicate")
    assert fakes.replicate.cancels == [prediction]
    assert fakes.replicate.prediction(prediction)["status"] == "canceled"
    record = api.settled("rep-cancel")
    assert record["status"] == "canceled"
    assert api.one_callback("rep-cancel", grace=0.3)["data"] == FAILED
    assert files.hits_for("/provider/output.mp4") == 0


def test_redis_media_store_serves_the_video_from_redis(
    service, fakes, files: FileServer, redis: Redis, tmp_path: Path
) -> None:
    """MEDIA_STORE=redis: the video lives in Redis under its digest and the web serves it with Range."""
    api = service(MEDIA_STORE="redis")
    api.submit("in-redis", files.put("/a.png", scene_bytes(), "image/png"), expect=202)
    record = api.settled("in-redis")
    assert record["status"] == "completed", record
    name = RequestIdentity("", "in-redis").media_name(MEDIA_SECRET)
    assert api.one_callback("in-redis", grace=0.3)["data"]["output"]["url"] == f"{BASE}/media/{name}.mp4"
    stored = redis.get(REDIS_PREFIX + name)
    assert stored is not None and 0 < redis.ttl(REDIS_PREFIX + name) <= settings_from({}).media_ttl
    assert served_video(api.client, record["video_url"]) == stored
    assert probe(stored).codec == "h264"
    assert not (tmp_path / "media").exists()


def test_media_older_than_media_ttl_are_removed(start_process, backend_env: dict[str, str], tmp_path: Path) -> None:
    """With the Procfile's worker and scheduler running, a video older than MEDIA_TTL disappears."""
    media = tmp_path / "media"
    media.mkdir()
    old, young = media / f"{'a' * 40}.mp4", media / f"{'b' * 40}.mp4"
    for path in (old, young):
        path.write_bytes(b"video")
    past = time.time() - 7200
    os.utime(old, (past, past))
    start_process("worker", **backend_env, MEDIA_TTL="3600")
    start_process("scheduler", **backend_env, MEDIA_TTL="3600")
    wait_for(lambda: not old.exists(), timeout=10, interval=0.2, message="the old video to be removed")
    assert young.exists()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"ALLOW_LOCAL_BACKENDS": ""}, ["CAPTION_BACKEND", "VIDEO_BACKEND", "ALLOW_LOCAL_BACKENDS"]),
        ({"CAPTION_BACKEND": "replicate", "REPLICATE_API_TOKEN": ""}, ["REPLICATE_API_TOKEN"]),
        ({"VIDEO_BACKEND": "pika", "PIKAPI_BEARER_TOKEN": "", "GAME_API_KEY": ""}, ["PIKAPI_BEARER_TOKEN"]),
    ],
)
def test_worker_refuses_to_start_without_what_its_backends_need(
    start_process, backend_env: dict[str, str], overrides: dict[str, str], named: list[str]
) -> None:
    """A worker stops at start with a message naming the missing permission or token."""
    worker = start_process("worker", **{**backend_env, **overrides})
    assert worker.proc is not None
    assert worker.proc.wait(timeout=10) != 0
    for name in named:
        assert name in worker.output
