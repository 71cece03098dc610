"""The media store: videos the service makes or keeps, served by the web at ``/media/<name>.mp4``.

Names are an HMAC of the owner and request id under a server secret, never the raw id. Files live on disk
(``MEDIA_DIR``, shared by web and worker on one machine) or in Redis (``MEDIA_STORE=redis``, for
platforms whose processes do not share a disk), and go away after ``MEDIA_TTL``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from pathlib import Path

from redis import Redis

from config import Settings

_NAME = re.compile(r"[0-9a-f]{40}")
REDIS_PREFIX = "i2v:media:"


def media_name(secret: str, owner: str, request_id: str) -> str:
    """The file name (without extension) of a request's video: an HMAC under ``MEDIA_NAME_SECRET``.

    Owner and request id alone would not do: a key's digest (which configurations hold) and a
    guessable id would give the name away. The pipeline stores the name in the record when it
    makes it, so rotating the secret never changes the URL of a video already announced.
    """
    return hmac.new(secret.encode(), f"media\x00{owner}\x00{request_id}".encode(), hashlib.sha256).hexdigest()[:40]


def legacy_media_name(owner: str, request_id: str) -> str:
    """The name of a video of a request submitted before names were keyed (and stored in the record)."""
    return hashlib.sha256(f"media\x00{owner}\x00{request_id}".encode()).hexdigest()[:40]


def valid_name(name: str) -> bool:
    """Whether ``name`` can be a media name (guards the download route against path tricks)."""
    return bool(_NAME.fullmatch(name))


class MediaStore:
    """Saves and reads videos, and forgets them after ``MEDIA_TTL``."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.directory = Path(settings.media_dir)

    def url(self, name: str) -> str:
        """The absolute public URL of a video."""
        return f"{self.settings.public_base_url.rstrip('/')}/media/{name}.mp4"

    def save(self, name: str, data: bytes) -> str:
        """Store a video and return its public URL."""
        if self.settings.media_store == "redis":
            self.redis.set(REDIS_PREFIX + name, data, ex=self.settings.media_ttl)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.directory / f".{name}.{os.getpid()}.part"
            partial.write_bytes(data)
            partial.replace(self.directory / f"{name}.mp4")  # readers never see half a file
        return self.url(name)

    def exists(self, name: str) -> bool:
        """Whether a video is stored under ``name``."""
        if self.settings.media_store == "redis":
            return bool(self.redis.exists(REDIS_PREFIX + name))
        return (self.directory / f"{name}.mp4").is_file()

    def read(self, name: str) -> bytes | None:
        """A stored video's bytes (Redis store), or None."""
        data = self.redis.get(REDIS_PREFIX + name)
        return bytes(data) if data is not None else None

    def path(self, name: str) -> Path | None:
        """A stored video's file (disk store), or None."""
        path = self.directory / f"{name}.mp4"
        return path if path.is_file() else None

    def expire(self) -> int:
        """Delete disk videos older than ``MEDIA_TTL`` (Redis expires its own); returns how many."""
        if self.settings.media_store == "redis" or not self.directory.is_dir():
            return 0
        cutoff = time.time() - self.settings.media_ttl
        removed = 0
        for path in self.directory.glob("*.mp4"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
