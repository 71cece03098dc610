"""Reading a submission: the submit schemas' rules, without their machinery for the common case.

Submitting is the one hot path of the web process. A valid submission (an allowed
``x-request-id`` and a JSON object with a string ``image_id``, maybe a ``callback_url``, both
passing the URL rules) is read straight from the request with the same checks the schemas run.
Anything else goes through webargs and the marshmallow schemas, so every error reads exactly as
the spec documents it. A test holds the two paths to the same answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import request
from webargs.flaskparser import FlaskParser

from i2v_app import services
from i2v_app.schemas import REQUEST_ID_PATTERN, RequestHeadersSchema, SubmitSchema, unescape_url
from jobs.media import upload_name
from jobs.urlpolicy import UnsafeURL, check_image_url


@dataclass(frozen=True, slots=True)
class Submission:
    """A valid submission."""

    request_id: str
    image_url: str
    callback_url: str | None


def read_submission(parser: FlaskParser) -> Submission:
    """The submission in the current request.

    Raises:
        werkzeug.exceptions.HTTPException: 400 or 422 from ``parser``, for anything invalid.
    """
    request_id = request.headers.get("x-request-id")
    if request_id is None or not REQUEST_ID_PATTERN.fullmatch(request_id):
        request_id = parser.parse(RequestHeadersSchema(), request, location="headers")["request_id"]
    settings = services.settings()
    body = quick_body(request.get_data(cache=True), settings.image_host_allowlist, settings.callback_url_allowlist)
    if body is None or upload_name(body["image_id"], settings.public_base_url):
        # An upload's URL has rules of its own (still stored, reachable by the providers): the schema's.
        body = parser.parse(SubmitSchema(), request, location="json")
    return Submission(request_id, body["image_id"], body.get("callback_url"))


def quick_body(raw: bytes, image_hosts: tuple[str, ...], callback_hosts: tuple[str, ...]) -> dict[str, Any] | None:
    """What ``SubmitSchema`` loads from ``raw`` when it is plainly valid; None to let the schema decide."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if type(data) is not dict:
        return None
    image, callback = data.get("image_id"), data.get("callback_url")
    if type(image) is not str or not (callback is None or type(callback) is str):
        return None
    try:
        image = check_image_url(unescape_url(image), image_hosts)
        if callback is not None:
            callback = check_image_url(unescape_url(callback), callback_hosts)
    except UnsafeURL:
        return None
    return {"image_id": image, "callback_url": callback}
