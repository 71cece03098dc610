"""Image uploads: ``POST /api/v1/uploads`` stores a cleaned copy, ``GET /uploads/<name>`` serves it.

An upload is read against its own size cap (``UPLOAD_MAX_BYTES``; ``MAX_BODY_BYTES`` stays for
every other route) and a deadline (``UPLOAD_READ_DEADLINE``), so a slow client cannot hold a web
worker for long. The image is decoded under the service's image rules (:mod:`jobs.images`),
re-encoded from its pixels alone (no EXIF, GPS or other metadata survives), counted against the
key's byte quota and stored in the media store under a random name for ``UPLOAD_TTL``. Its URL,
under ``PUBLIC_BASE_URL``, is accepted as ``image_id``: the local backends read it from the media
store, the remote ones fetch it over the internet (so uploads are refused while they could not).
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint as FlaskBlueprint
from flask import Response, request, send_file
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import parse_form_data

from i2v_app import services
from i2v_app.api import owner
from i2v_app.schemas import UploadReplySchema
from jobs.images import CONTENT_TYPES, EXTENSIONS, BadImage, reencode
from jobs.media import MediaStore, new_upload_name, upload_reach_problem, valid_upload_name

UPLOAD_ROUTE = "/api/v1/uploads"
#: Room for multipart framing (boundaries, part headers) on top of the image itself.
MULTIPART_SLACK = 64 * 1024
READ_CHUNK = 64 * 1024
#: Per-key bytes of uploads held (a counter), and the uploads they are made of, ``<name>:<bytes>``
#: scored by expiry time: each upload's bytes are given back once it has expired.
QUOTA_PREFIX = "i2v:upload-bytes:"
HELD_PREFIX = "i2v:uploads:"
SERVED_MAX_AGE = 3600

# Count an upload's bytes against its key's quota, or refuse it, atomically. Expired uploads are
# given back first, so a key that uploads every day is held to what it holds now, not to all time.
# KEYS: the key's counter, its uploads; ARGV: bytes, quota, now, expiry, member, TTL.
# Returns the bytes now held, or -1 when over.
_RESERVE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if #expired > 0 then
  local freed = 0
  for _, member in ipairs(expired) do freed = freed + tonumber(string.match(member, ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
  redis.call('DECRBY', KEYS[1], freed)
end
local used = math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0'))
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
redis.call('SET', KEYS[1], used + tonumber(ARGV[1]), 'EX', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return used + tonumber(ARGV[1])
"""

blp = Blueprint("uploads", __name__, url_prefix=UPLOAD_ROUTE, description="Images uploaded to use as image_id")
served = FlaskBlueprint("served_uploads", __name__)


class TooSlow(Exception):
    """The body did not arrive within ``UPLOAD_READ_DEADLINE``."""


class TooLarge(Exception):
    """The body is larger than the upload cap."""


def read_body(limit: int, seconds: float) -> bytes:
    """The request body, read in chunks against a monotonic deadline and a size cap.

    Under gunicorn a timer shuts the socket's reading side at the deadline: a read there waits
    for a whole chunk, so a client trickling a byte at a time, or sending nothing, would hold the
    worker for as long as it liked; the shutdown ends that wait at once (the reply still goes out).

    Raises:
        TooSlow: the deadline passed.
        TooLarge: more than ``limit`` bytes (declared or sent).
    """
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge
    request.max_content_length = limit + 1  # werkzeug's own cap, before the stream is made
    deadline = time.monotonic() + seconds
    sock: socket.socket | None = request.environ.get("gunicorn.socket")
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    chunks: list[bytes] = []
    size = 0
    try:
        stream = request.stream
        while True:
            if time.monotonic() >= deadline:
                raise TooSlow
            chunk = stream.read(READ_CHUNK)
            if not chunk:
                if expired.is_set():
                    raise TooSlow  # cut short by the timer: what came is not the whole body
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise TooLarge
            chunks.append(chunk)
    except (TooSlow, TooLarge):
        raise
    except RequestEntityTooLarge:
        raise TooLarge from None  # werkzeug's own count of a chunked body: answered in the same words
    except Exception:
        if expired.is_set():
            raise TooSlow from None  # the server's reader saw the shut socket as a lost client
        raise
    finally:
        timer.cancel()


def image_bytes(body: bytes) -> bytes:
    """The image in an upload body: the multipart field ``file``, or the whole body when it is ``image/*``."""
    if request.mimetype.startswith("image/"):
        return body
    environ = {**request.environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
    _, _, files = parse_form_data(environ, max_content_length=len(body) + 1, max_form_parts=16)
    part = files.get("file")
    if part is None:
        abort(422, message="Send the image as the multipart field 'file'.", errors={"file": ["missing"]})
    return part.read()


def reserve(name: str, size: int, expires: float) -> None:
    """Count upload ``name`` of ``size`` bytes, kept until ``expires``, against the caller's quota, or answer 413."""
    settings = services.settings()
    keys = (QUOTA_PREFIX + owner(), HELD_PREFIX + owner())
    args = (size, settings.upload_quota_bytes, time.time(), expires, f"{name}:{size}", settings.upload_ttl)
    if int(services.redis().eval(_RESERVE, 2, *keys, *args)) < 0:
        abort(
            413,
            message=f"This API key's uploads would exceed UPLOAD_QUOTA_BYTES ({settings.upload_quota_bytes} bytes); "
            "each upload's bytes are given back when it expires (UPLOAD_TTL).",
        )


def release(name: str, size: int) -> None:
    """Give back what :func:`reserve` counted, for an upload that was not stored after all."""
    redis = services.redis()
    if redis.zrem(HELD_PREFIX + owner(), f"{name}:{size}"):  # not given back already (expired meanwhile)
        redis.decrby(QUOTA_PREFIX + owner(), size)


def iso(when: float) -> str:
    """A Unix time as ISO-8601, in the format of ``created_at``."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@blp.route("")
class Uploads(MethodView):
    """Uploading images."""

    @blp.doc(
        security=[{"bearerAuth": []}],
        requestBody={
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
                **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in CONTENT_TYPES.values()},
            },
        },
    )
    @blp.response(201, UploadReplySchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(401, response="UNAUTHORIZED")
    @blp.alt_response(408, response="REQUEST_TIMEOUT")
    @blp.alt_response(409, response="CONFLICT")
    @blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")
    @blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @blp.alt_response(503, response="SERVICE_UNAVAILABLE")
    def post(self) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Upload an image to use as ``image_id``.

        Send a PNG, JPEG, WebP or GIF as the multipart field ``file``, or as the whole body with
        its ``image/*`` type. It is decoded (the name and declared type do not count), re-encoded
        without metadata (EXIF, GPS), and served at the returned URL until ``expires_at``
        (``UPLOAD_TTL``). At most ``UPLOAD_MAX_BYTES`` per image, ``UPLOAD_QUOTA_BYTES`` held per
        API key, and the body must arrive within ``UPLOAD_READ_DEADLINE`` seconds. Refused (409)
        when the video or caption provider would have to fetch the image and ``PUBLIC_BASE_URL``
        is not a public address.
        """
        settings = services.settings()
        reason = upload_reach_problem(settings)
        if reason:
            abort(409, message=reason)
        multipart = request.mimetype == "multipart/form-data"
        if not (multipart or request.mimetype.startswith("image/")):
            abort(415, message="Send the image as multipart/form-data (field 'file') or as an image/* body.")
        limit = settings.upload_max_bytes + (MULTIPART_SLACK if multipart else 0)
        try:
            body = read_body(limit, settings.upload_read_deadline)
        except TooSlow:
            abort(
                408,
                message=f"The upload did not arrive within {settings.upload_read_deadline:g} s.",
                headers={"Connection": "close"},
            )
        except TooLarge:
            abort(413, message=f"The image is larger than {settings.upload_max_bytes} bytes (UPLOAD_MAX_BYTES).")
        data = image_bytes(body)
        if not data:
            abort(422, message="The upload is empty.", errors={"file": ["empty"]})
        if len(data) > settings.upload_max_bytes:
            abort(413, message=f"The image is larger than {settings.upload_max_bytes} bytes (UPLOAD_MAX_BYTES).")
        try:
            clean = reencode(data)
        except BadImage as exc:
            abort(422, message=f"Not an image the service takes: {exc}", errors={"file": [str(exc)]})
        name = new_upload_name(clean.extension)
        expires = time.time() + settings.upload_ttl
        reserve(name, len(clean.data), expires)
        store = MediaStore(settings, services.redis())
        try:
            store.save_upload(name, clean.data)
        except BaseException:
            release(name, len(clean.data))
            raise
        url = store.upload_url(name)
        return {"url": url, "expires_at": iso(expires)}, 201, {"Location": url}


@served.get("/uploads/<name>")
def uploaded(name: str) -> Response:
    """Serve an uploaded image (public: its name is 160 random bits) as the type it decoded as."""
    if not valid_upload_name(name):
        abort(404)
    data = MediaStore(services.settings(), services.redis()).read_upload(name)
    if data is None:
        abort(404)
    kind = {extension: fmt for fmt, extension in EXTENSIONS.items()}[name.rsplit(".", 1)[1]]
    resp = send_file(
        io.BytesIO(data), mimetype=CONTENT_TYPES[kind], max_age=SERVED_MAX_AGE, etag=name, conditional=True
    )
    resp.headers["X-Content-Type-Options"] = "nosniff"
    # Only ever an image: nothing in it may run or load anything, even if opened directly.
    resp.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return resp
