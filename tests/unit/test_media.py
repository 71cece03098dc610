"""The media store (disk and Redis) and the ``/media/<name>.mp4`` route with HTTP Range."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from redis import Redis

from config import Settings, settings_from
from i2v_app import create_app
from jobs.identity import RequestIdentity
from jobs.media import (
    NAME_KEY_IN_REDIS,
    REDIS_CHUNK,
    REDIS_PREFIX,
    MediaStore,
    valid_name,
)
from jobs.pipeline import video_name
from jobs.store import Record
from tests.helpers import redis_bytes

VIDEO = bytes(range(256)) * 40  # 10,240 bytes standing in for an MP4
BASE = "https://i2v.example.com"
SECRET = "unit-test-media-secret-0123456789abcdef"


def media_settings(tmp_path: Path, redis_url: str = "redis://127.0.0.1:6379/0", **env: str) -> Settings:
    return settings_from(
        {
            "MEDIA_DIR": str(tmp_path / "media"),
            "PUBLIC_BASE_URL": BASE + "/",
            "MEDIA_TTL": "3600",
            "REDIS_URL": redis_url,
            "I2V_AUTH_DISABLED": "1",
            **env,
        }
    )


# -- names ------------------------------------------------------------------------------------------


def test_media_names_are_digests_of_owner_and_request_id() -> None:
    """40 hex digits, stable, different per owner and per id, never containing the id."""
    name = RequestIdentity("", "demo-1").media_name(SECRET)
    assert re.fullmatch(r"[0-9a-f]{40}", name)
    assert RequestIdentity("", "demo-1").media_name(SECRET) == name
    assert RequestIdentity("key-abc", "demo-1").media_name(SECRET) != name
    assert RequestIdentity("", "demo-2").media_name(SECRET) != name
    assert "demo" not in RequestIdentity("", "demo").media_name(SECRET)
    assert valid_name(name)


class _Store:
    """Stands in for the record store: remembers what the pipeline wrote."""

    def __init__(self) -> None:
        self.writes: list[dict] = []

    def save(self, record: Record, **fields: object) -> None:
        for name, value in fields.items():
            setattr(record, name, value)
        self.writes.append(fields)


def _ctx(secret: str) -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(media_name_secret=secret), store=_Store(), redis=None)


def test_video_name_is_made_once_stored_and_kept_across_a_secret_change() -> None:
    """The first look makes the keyed name and stores it; later looks (even under a new secret) reuse it."""
    record = Record(request_id="r-1", image_url="https://example.com/a.png", owner="key-abc")
    first = _ctx(SECRET)
    name = video_name(first, record)
    assert name == RequestIdentity("key-abc", "r-1").media_name(SECRET)
    assert first.store.writes == [{"media_name": name}]
    rotated = _ctx("another-secret-0123456789abcdef0123456789")
    assert video_name(rotated, Record.from_redis(record.to_redis())) == name
    assert rotated.store.writes == []


def test_video_name_of_a_request_submitted_before_the_upgrade_is_the_old_one() -> None:
    """A record submitted without a stored name keeps the unkeyed name its video was made under."""
    record = Record(request_id="r-2", image_url="https://example.com/a.png", provider_job_id="pika-1")
    ctx = _ctx(SECRET)
    assert video_name(ctx, record) == RequestIdentity("", "r-2").legacy_media_name
    assert ctx.store.writes == []


def test_media_names_need_the_server_secret() -> None:
    """Owner and request id alone (a key's digest and a guessable id) do not give the name away."""
    name = RequestIdentity("key-abc", "demo-1").media_name(SECRET)
    assert name != RequestIdentity("key-abc", "demo-1").legacy_media_name
    assert name != RequestIdentity("key-abc", "demo-1").media_name(SECRET + "x")
    assert valid_name(RequestIdentity("key-abc", "demo-1").legacy_media_name)


@pytest.mark.parametrize(
    "name",
    ["", "a" * 39, "a" * 41, "A" * 40, "g" * 40, "../../config.py", "a" * 40 + ".mp4", "a" * 39 + "/"],
)
def test_valid_name_refuses_anything_but_40_lowercase_hex(name: str) -> None:
    """Only names the store could have made pass."""
    assert not valid_name(name)


# -- disk store -------------------------------------------------------------------------------------


def test_disk_store_saves_atomically_and_answers_exists_path_and_url(tmp_path: Path, redis: Redis) -> None:
    """A saved video is a file named <digest>.mp4 (no partial files left) with a URL under PUBLIC_BASE_URL."""
    store = MediaStore(media_settings(tmp_path), redis)
    name = RequestIdentity("", "disk-1").media_name(SECRET)
    assert not store.exists(name)
    assert store.path(name) is None
    url = store.save(name, VIDEO)
    assert url == f"{BASE}/media/{name}.mp4"
    assert store.url(name) == url
    assert store.exists(name)
    assert store.path(name) == tmp_path / "media" / f"{name}.mp4"
    assert store.path(name).read_bytes() == VIDEO
    assert sorted(p.name for p in (tmp_path / "media").iterdir()) == [f"{name}.mp4"]
    assert redis.keys(f"{REDIS_PREFIX}*") == []
    store.save(name, b"again")
    assert store.path(name).read_bytes() == b"again"


def test_media_url_keeps_a_path_prefix_of_public_base_url(tmp_path: Path, redis: Redis) -> None:
    """PUBLIC_BASE_URL may carry a path; the media path is appended to it."""
    store = MediaStore(media_settings(tmp_path, PUBLIC_BASE_URL="https://example.com/i2v"), redis)
    assert store.url("ab" * 20) == "https://example.com/i2v/media/" + "ab" * 20 + ".mp4"


def test_expire_removes_only_videos_older_than_media_ttl(tmp_path: Path, redis: Redis) -> None:
    """Files whose mtime is more than MEDIA_TTL ago go; newer ones stay."""
    store = MediaStore(media_settings(tmp_path), redis)
    assert store.expire() == 0  # no directory yet
    old, young, edge = (
        RequestIdentity("", "old").media_name(SECRET),
        RequestIdentity("", "young").media_name(SECRET),
        RequestIdentity("", "edge").media_name(SECRET),
    )
    for name in (old, young, edge):
        store.save(name, VIDEO)
    now = time.time()
    os.utime(store.path(old), (now - 3700, now - 3700))
    os.utime(store.path(edge), (now - 3500, now - 3500))
    assert store.expire() == 1
    assert not store.exists(old)
    assert store.exists(young) and store.exists(edge)
    assert store.expire() == 0


def test_expire_removes_partial_files_a_killed_copy_left(tmp_path: Path, redis: Redis) -> None:
    """A partial file older than MEDIA_TTL (its writer was killed) goes; a younger one may still be written."""
    store = MediaStore(media_settings(tmp_path), redis)
    (tmp_path / "media").mkdir()
    stale, fresh = tmp_path / "media" / f".{'a' * 40}.1.ab.part", tmp_path / "media" / f".{'b' * 40}.2.cd.part"
    for path in (stale, fresh):
        path.write_bytes(VIDEO)
    os.utime(stale, (time.time() - 3700, time.time() - 3700))
    assert store.expire() == 1
    assert not stale.exists() and fresh.exists()


# -- Redis store ------------------------------------------------------------------------------------


def test_redis_store_keeps_bytes_with_media_ttl_and_writes_no_files(tmp_path: Path, redis: Redis) -> None:
    """MEDIA_STORE=redis keeps the video under a digest key that expires after MEDIA_TTL."""
    store = MediaStore(media_settings(tmp_path, MEDIA_STORE="redis"), redis)
    name = RequestIdentity("key-1", "redis-1").media_name(SECRET)
    assert not store.exists(name)
    assert store.open(name) is None
    assert store.save(name, VIDEO) == f"{BASE}/media/{name}.mp4"
    assert store.exists(name)
    assert redis_bytes(store, name) == VIDEO
    assert store.path(name) is None
    assert 3500 < redis.ttl(REDIS_PREFIX + name) <= 3600
    assert [k.decode() for k in redis.keys("*")] == [REDIS_PREFIX + name]
    assert "redis-1" not in REDIS_PREFIX + name
    assert not (tmp_path / "media").exists()
    assert store.expire() == 0


def test_a_redis_chunk_sent_twice_is_stored_once(tmp_path: Path, redis: Redis) -> None:
    """The worker's connection retries a command whose reply was lost; a repeated chunk must not double."""

    class Repeating:
        """A Redis client that sends every chunk command twice, as a retry after a lost reply would."""

        def __getattr__(self, name: str):
            command = getattr(redis, name)
            if name not in ("setrange", "append"):
                return command
            return lambda *args: [command(*args), command(*args)][-1]

    store = MediaStore(media_settings(tmp_path, MEDIA_STORE="redis"), Repeating())  # type: ignore[arg-type]
    name = RequestIdentity("", "retried").media_name(SECRET)
    video = os.urandom(3 * REDIS_CHUNK + 5)
    with store.writer(name) as out:
        for start in range(0, len(video), 64 * 1024):
            out.write(video[start : start + 64 * 1024])
    assert redis.get(REDIS_PREFIX + name) == video


# -- the /media route ---------------------------------------------------------------------------------


@pytest.fixture(params=["disk", "redis"])
def served(request, tmp_path: Path, redis: Redis, redis_url: str):
    """An app and one stored video, in either store."""
    settings = media_settings(tmp_path, redis_url, MEDIA_STORE=request.param)
    name = RequestIdentity("", f"route-{request.param}").media_name(SECRET)
    MediaStore(settings, redis).save(name, VIDEO)
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client(), name


def test_media_route_serves_the_whole_video(served) -> None:
    """200, video/mp4, every byte, and Range support announced."""
    client, name = served
    resp = client.get(f"/media/{name}.mp4")
    assert resp.status_code == 200
    assert resp.mimetype == "video/mp4"
    assert resp.data == VIDEO
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert int(resp.headers["Content-Length"]) == len(VIDEO)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, len(VIDEO) - 1), ("bytes=-10", len(VIDEO) - 10, len(VIDEO) - 1)],
)
def test_media_route_answers_ranges_with_206(served, header: str, start: int, end: int) -> None:
    """A Range request gets 206, Content-Range and exactly those bytes (what video players ask for)."""
    client, name = served
    resp = client.get(f"/media/{name}.mp4", headers={"Range": header})
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(VIDEO)}"
    assert resp.data == VIDEO[start : end + 1]


def test_media_route_refuses_an_unsatisfiable_range(served) -> None:
    """A range past the end is 416."""
    client, name = served
    resp = client.get(f"/media/{name}.mp4", headers={"Range": f"bytes={len(VIDEO) + 10}-"})
    assert resp.status_code == 416


@pytest.mark.parametrize(
    "path",
    [
        "/media/" + "0" * 40 + ".mp4",
        "/media/" + "Z" * 40 + ".mp4",
        "/media/short.mp4",
        "/media/..%2f..%2fconfig.py.mp4",
        "/media/%2e%2e/config.py",
    ],
)
def test_media_route_is_404_for_unknown_or_invalid_names(served, path: str) -> None:
    """Names the store never made, and path tricks, are 404."""
    client, _ = served
    assert client.get(path).status_code == 404


def test_media_route_is_public_when_api_keys_are_required(tmp_path: Path, redis: Redis, redis_url: str) -> None:
    """The digest name is the capability: a callback's URL opens without an API key."""
    settings = media_settings(tmp_path, redis_url, I2V_AUTH_DISABLED="0", I2V_API_KEYS="secret-key-0123456789")
    name = RequestIdentity("key-x", "public").media_name(SECRET)
    MediaStore(settings, redis).save(name, VIDEO)
    client = create_app(settings).test_client()
    assert client.get(f"/media/{name}.mp4").status_code == 200
    assert client.get("/api/v1/i2v/public").status_code == 401


def test_without_a_configured_secret_names_are_keyed_with_one_key_per_deployment(redis: Redis) -> None:
    """No MEDIA_NAME_SECRET: a random key made once and kept in Redis, the same for every worker."""
    record = Record(request_id="r-2", image_url="https://example.com/a.png", owner="key-abc")
    first = SimpleNamespace(settings=Settings(), store=_Store(), redis=redis)
    name = video_name(first, dataclasses.replace(record))
    second = SimpleNamespace(settings=Settings(), store=_Store(), redis=redis)
    assert video_name(second, dataclasses.replace(record)) == name
    assert name != RequestIdentity("key-abc", "r-2").legacy_media_name
    assert name == RequestIdentity("key-abc", "r-2").media_name(redis.get(NAME_KEY_IN_REDIS).decode())
    assert len(redis.get(NAME_KEY_IN_REDIS)) >= 64
