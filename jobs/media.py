"""The media store: videos the service makes or keeps, served by the web at ``/media/<name>.mp4``.

Names are an HMAC of the owner and request id under a server secret (see
:meth:`jobs.identity.RequestIdentity.media_name`), never the raw id. Files live on disk
(``MEDIA_DIR``, shared by web and worker on one machine) or in Redis (``MEDIA_STORE=redis``, for
platforms whose processes do not share a disk), and go away after ``MEDIA_TTL``.

Videos are written as they stream in and read back in slices: neither the worker copying a
provider's video nor the web serving one holds a whole video in memory. In Redis a video is one
string, written chunk by chunk under a temporary key and renamed into place when complete, and
read with ``GETRANGE``.

Uploaded images (``POST /api/v1/uploads``) live in the same store under a random name with their
format's extension, ``uploads/<name>.<ext>`` on disk or ``i2v:upload:<name>.<ext>`` in Redis, for
``UPLOAD_TTL``. Their URL is ``PUBLIC_BASE_URL/uploads/<name>.<ext>``; the worker recognises it and
reads the image from here, never over HTTP.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from redis import Redis

from config import Settings
from jobs.urlpolicy import UnsafeURL, inspect_url

_NAME = re.compile(r"[0-9a-f]{40}")
REDIS_PREFIX = "i2v:media:"
#: Bytes per Redis command when a video is written or read in slices.
REDIS_CHUNK = 1024 * 1024


#: Redis prefix of uploaded images, and the URL path (and disk directory) they are served from.
UPLOAD_PREFIX = "i2v:upload:"
UPLOAD_PATH = "/uploads/"
UPLOAD_DIR = "uploads"
_UPLOAD_NAME = re.compile(r"[0-9a-f]{40}\.(png|jpg|webp|gif)")


def valid_upload_name(name: str) -> bool:
    """Whether ``name`` can be an upload's name (``<40 hex>.<ext>``), which guards paths and keys."""
    return bool(_UPLOAD_NAME.fullmatch(name))


def new_upload_name(extension: str) -> str:
    """A fresh, unguessable upload name (160 random bits) with ``extension``."""
    return f"{secrets.token_hex(20)}.{extension}"


def upload_name(url: str, public_base_url: str) -> str | None:
    """The upload name of ``url`` when it is one of this service's upload URLs, else None."""
    base = public_base_url.rstrip("/")
    prefix = f"{base}{UPLOAD_PATH}"
    if not base or not url.startswith(prefix):
        return None
    name = url[len(prefix) :]
    return name if valid_upload_name(name) else None


def remote_fetchers(settings: Settings) -> list[str]:
    """The configured backends that fetch a request's image themselves, over the internet."""
    fetchers = []
    if settings.caption_backend == "replicate":
        fetchers.append("CAPTION_BACKEND=replicate")
    if settings.video_backend in ("pika", "replicate"):
        fetchers.append(f"VIDEO_BACKEND={settings.video_backend}")
    return fetchers


def upload_reach_problem(settings: Settings) -> str | None:
    """Why a provider could not fetch an uploaded image from this service, or None if it can.

    Uploads are served under ``PUBLIC_BASE_URL``; a remote backend fetches them from there, which
    it cannot do when that address is unset, loopback, private or a local name. Better refused at
    once than failed minutes later.
    """
    fetchers = remote_fetchers(settings)
    if not fetchers:
        return None  # the local backends read uploads from the media store
    who = " and ".join(fetchers)
    if not settings.public_base_url:
        return f"uploads are off: {who} must fetch the image from PUBLIC_BASE_URL, which is unset"
    try:
        inspect_url(f"{settings.public_base_url.rstrip('/')}/")
    except UnsafeURL:
        return (
            f"uploads are off: {who} must fetch the image from PUBLIC_BASE_URL ({settings.public_base_url}), "
            "a loopback, private or local address the provider cannot reach"
        )
    return None


#: Where the deployment's own name key lives when ``MEDIA_NAME_SECRET`` is unset.
NAME_KEY_IN_REDIS = "i2v:media-name-key"


def name_secret(settings: Settings, redis: Redis) -> str:
    """The key of video names: ``MEDIA_NAME_SECRET``, else a random key made once per deployment.

    The random key lives in Redis, where every worker finds the same one. Losing it (a Redis that
    restarts empty) renames nothing: each name is stored in its record when it is made.
    """
    if settings.media_name_secret:
        return settings.media_name_secret
    redis.set(NAME_KEY_IN_REDIS, secrets.token_hex(32), nx=True)
    stored = redis.get(NAME_KEY_IN_REDIS)
    return stored.decode() if isinstance(stored, bytes) else str(stored)


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
        with self.writer(name) as out:
            out.write(data)
        return self.url(name)

    @contextmanager
    def writer(self, name: str) -> Iterator[IO[bytes]]:
        """A file-like object to stream a video into; it is stored only if the block ends without error.

        Readers never see half a video: it is written aside (a partial file, or a temporary Redis
        key) and moved into place at the end; on an error the partial copy is deleted.
        """
        if self.settings.media_store == "redis":
            writer = _RedisWriter(self.redis, f"{REDIS_PREFIX}{name}.part.{secrets.token_hex(8)}")
            try:
                yield writer  # type: ignore[misc]
                writer.flush()
                with self.redis.pipeline() as pipe:
                    # An empty append makes the key exist even for an empty video.
                    pipe.append(writer.key, b"").rename(writer.key, REDIS_PREFIX + name)
                    pipe.expire(REDIS_PREFIX + name, self.settings.media_ttl).execute()
            finally:
                self.redis.delete(writer.key)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            with partial.open("wb") as out:
                yield out
            partial.replace(self.directory / f"{name}.mp4")
        finally:
            partial.unlink(missing_ok=True)

    def upload_url(self, name: str) -> str:
        """The absolute public URL of an uploaded image."""
        return f"{self.settings.public_base_url.rstrip('/')}{UPLOAD_PATH}{name}"

    def save_upload(self, name: str, data: bytes) -> None:
        """Store an uploaded image for ``UPLOAD_TTL`` (written aside and moved into place on disk)."""
        if self.settings.media_store == "redis":
            self.redis.set(UPLOAD_PREFIX + name, data, ex=self.settings.upload_ttl)
            return
        directory = self.directory / UPLOAD_DIR
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            partial.write_bytes(data)
            partial.replace(directory / name)
        finally:
            partial.unlink(missing_ok=True)

    def read_upload(self, name: str) -> bytes | None:
        """An uploaded image's bytes, or None when it is unknown or older than ``UPLOAD_TTL``."""
        if not valid_upload_name(name):
            return None
        if self.settings.media_store == "redis":
            data = self.redis.get(UPLOAD_PREFIX + name)
            return bytes(data) if data is not None else None
        path = self.directory / UPLOAD_DIR / name
        try:
            # The janitor deletes old files only every JANITOR_INTERVAL: an expired one is gone already.
            if path.stat().st_mtime < time.time() - self.settings.upload_ttl:
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def upload_exists(self, name: str) -> bool:
        """Whether an uploaded image is stored (and not expired) under ``name``."""
        if not valid_upload_name(name):
            return False
        if self.settings.media_store == "redis":
            return bool(self.redis.exists(UPLOAD_PREFIX + name))
        path = self.directory / UPLOAD_DIR / name
        try:
            return path.stat().st_mtime >= time.time() - self.settings.upload_ttl
        except FileNotFoundError:
            return False

    def exists(self, name: str) -> bool:
        """Whether a video is stored under ``name``."""
        if self.settings.media_store == "redis":
            return bool(self.redis.exists(REDIS_PREFIX + name))
        return (self.directory / f"{name}.mp4").is_file()

    def open(self, name: str) -> tuple[IO[bytes], int] | None:
        """A stored video (Redis store) as a seekable file that reads slices, with its size; or None."""
        key = REDIS_PREFIX + name
        size = int(self.redis.strlen(key))
        if not size and not self.redis.exists(key):
            return None
        return io.BufferedReader(_RedisReader(self.redis, key, size), buffer_size=REDIS_CHUNK), size

    def path(self, name: str) -> Path | None:
        """A stored video's file (disk store), or None."""
        path = self.directory / f"{name}.mp4"
        return path if path.is_file() else None

    def expire(self) -> int:
        """Delete disk videos older than ``MEDIA_TTL`` and uploads older than ``UPLOAD_TTL``; returns how many.

        Redis expires its own. Partial files that old are deleted too: a worker killed in the
        middle of a copy leaves one.
        """
        if self.settings.media_store == "redis" or not self.directory.is_dir():
            return 0
        removed = 0
        uploads = self.directory / UPLOAD_DIR
        for paths, ttl in (
            ([*self.directory.glob("*.mp4"), *self.directory.glob(".*.part")], self.settings.media_ttl),
            (list(uploads.glob("*")) if uploads.is_dir() else [], self.settings.upload_ttl),
        ):
            cutoff = time.time() - ttl
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed


class _RedisWriter:
    """Writes into a Redis string in chunks of up to ``REDIS_CHUNK`` bytes.

    Each chunk is a ``SETRANGE`` at its own offset, not an ``APPEND``: the worker's connection
    retries a command whose reply was lost, and a retried append would write the chunk twice.
    Not an ``io`` class on purpose: those flush when garbage-collected, which would write the
    rest of a failed copy back under the temporary key after it was deleted.
    """

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key
        self.offset = 0
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        """Buffer ``data``, sending a chunk to Redis once ``REDIS_CHUNK`` bytes are waiting."""
        self._buffer += data
        if len(self._buffer) >= REDIS_CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Append what is buffered."""
        if self._buffer:
            self.redis.setrange(self.key, self.offset, bytes(self._buffer))
            self.offset += len(self._buffer)
            # A temporary key nobody renamed (a crashed worker) must not stay for good.
            self.redis.expire(self.key, 3600)
            self._buffer.clear()


class _RedisReader(io.RawIOBase):
    """Reads a Redis string by ``GETRANGE``, one slice per read."""

    def __init__(self, redis: Redis, key: str, size: int) -> None:
        self.redis = redis
        self.key = key
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.size - self.position, REDIS_CHUNK)
        if want <= 0:
            return 0
        data = self.redis.getrange(self.key, self.position, self.position + want - 1)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)
