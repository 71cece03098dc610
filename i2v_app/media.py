"""``/media/<name>.mp4``: videos the service made or keeps, with HTTP Range support."""

from __future__ import annotations

import io

from flask import Blueprint, Response, abort, send_file

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
        data = store.read(name)
        if data is None:
            abort(404)
        return send_file(io.BytesIO(data), mimetype="video/mp4", conditional=True, etag=name, max_age=3600)
    path = store.path(name)
    if path is None:
        abort(404)
    return send_file(path.resolve(), mimetype="video/mp4", conditional=True, max_age=3600)
