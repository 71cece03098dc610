"""``/media/<name>.mp4``: videos the service made or keeps, with HTTP Range support."""

from __future__ import annotations

import time
from typing import IO

from flask import Blueprint, Response, abort, request, send_file
from werkzeug.wsgi import wrap_file

from i2v_app import services
from jobs.media import MediaStore, valid_name

media = Blueprint("media", __name__)


@media.get("/media/<name>.mp4")
def video(name: str) -> Response:
    """Serve one stored video (public: its name is an unguessable digest)."""
    if not valid_name(name):
        abort(404)
    store = MediaStore(services.settings(), services.redis())
    if services.settings().media_store == "redis":
        opened = store.open(name)
        if opened is None:
            abort(404)
        return _stream(*opened, etag=name)
    path = store.path(name)
    if path is None:
        abort(404)
    return send_file(path.resolve(), mimetype="video/mp4", conditional=True, max_age=3600)


def _stream(file: IO[bytes], size: int, etag: str, max_age: int = 3600) -> Response:
    """Serve a seekable file of known size with Range support, reading only the bytes sent.

    ``send_file`` learns the size only from paths and BytesIO; this is its file-object path with
    the size given, so a Range request seeks instead of reading the video from the start.
    """
    resp = Response(wrap_file(request.environ, file), mimetype="video/mp4", direct_passthrough=True)
    resp.content_length = size
    resp.cache_control.public = True
    resp.cache_control.max_age = max_age
    resp.expires = int(time.time() + max_age)
    resp.set_etag(etag)
    try:
        return resp.make_conditional(request.environ, accept_ranges=True, complete_length=size)
    except Exception:
        file.close()
        raise
