"""Uploads in the media store: their URLs, their expiry on disk, and when providers could not fetch them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from config import Settings, settings_from
from jobs.media import UPLOAD_DIR, MediaStore, new_upload_name, upload_name, upload_reach_problem, valid_upload_name

BASE = "https://i2v.example.com"


def upload_settings(tmp_path: Path, **env: str) -> Settings:
    return settings_from(
        {
            "MEDIA_DIR": str(tmp_path / "media"),
            "PUBLIC_BASE_URL": BASE,
            "MEDIA_TTL": "7200",
            "UPLOAD_TTL": "600",
            "I2V_AUTH_DISABLED": "1",
            **env,
        }
    )


def test_upload_names_are_random_and_only_this_services_urls_are_uploads() -> None:
    name = new_upload_name("png")
    assert valid_upload_name(name)
    assert name != new_upload_name("png")
    assert upload_name(f"{BASE}/uploads/{name}", BASE) == name
    assert upload_name(f"{BASE}/uploads/{name}", BASE + "/") == name
    for url in (
        f"https://elsewhere.example.com/uploads/{name}",
        f"{BASE}/uploads/{name}?x=1",
        f"{BASE}/uploads/../{name}",
        f"{BASE}/uploads/{name[:-3]}svg",
        f"{BASE}/media/{name}",
        f"{BASE}.evil.com/uploads/{name}",
    ):
        assert upload_name(url, BASE) is None, url
    assert upload_name(f"{BASE}/uploads/{name}", "") is None


def test_the_janitor_deletes_uploads_after_upload_ttl_and_videos_after_media_ttl(tmp_path: Path) -> None:
    store = MediaStore(upload_settings(tmp_path), redis=None)  # type: ignore[arg-type]
    old, fresh = new_upload_name("png"), new_upload_name("jpg")
    store.save_upload(old, b"old")
    store.save_upload(fresh, b"fresh")
    video = store.directory / f"{'a' * 40}.mp4"
    video.write_bytes(b"video")
    fifteen_minutes_ago = time.time() - 900  # past UPLOAD_TTL, within MEDIA_TTL
    for path in (store.directory / UPLOAD_DIR / old, video):
        os.utime(path, (fifteen_minutes_ago, fifteen_minutes_ago))
    assert store.read_upload(old) is None  # expired even before the janitor comes
    assert store.expire() == 1
    assert not (store.directory / UPLOAD_DIR / old).exists()
    assert store.read_upload(fresh) == b"fresh"
    assert video.exists()


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "local", "PUBLIC_BASE_URL": "http://127.0.0.1:8000"}, False),
        ({"CAPTION_BACKEND": "replicate", "VIDEO_BACKEND": "local", "PUBLIC_BASE_URL": "http://127.0.0.1:8000"}, True),
        ({"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "pika", "PUBLIC_BASE_URL": ""}, True),
        ({"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "pika", "PUBLIC_BASE_URL": "http://192.168.1.20:8000"}, True),
        ({"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "pika", "PUBLIC_BASE_URL": "http://i2v.internal"}, True),
        ({"CAPTION_BACKEND": "local", "VIDEO_BACKEND": "replicate", "PUBLIC_BASE_URL": "http://10.0.0.5"}, True),
        ({"VIDEO_BACKEND": "replicate", "PUBLIC_BASE_URL": "https://i2v.example.com"}, False),
    ],
)
def test_uploads_are_off_only_when_a_remote_backend_could_not_reach_them(
    tmp_path: Path, env: dict[str, str], refused: bool
) -> None:
    base = {"ALLOW_LOCAL_BACKENDS": "1", "PUBLIC_BASE_URL": ""}
    settings = upload_settings(tmp_path, **{**base, **env})
    problem = upload_reach_problem(settings)
    assert bool(problem) is refused, problem
    if problem:
        assert "PUBLIC_BASE_URL" in problem
