"""Request and reply schemas of the HTTP API (marshmallow), also the source of the OpenAPI spec."""

from __future__ import annotations

import html
import re
from typing import Any

from flask import current_app, has_app_context
from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate

from jobs.media import MediaStore, upload_name, upload_reach_problem
from jobs.states import CallbackStatus, Stage, Status
from jobs.urlpolicy import MAX_URL_LENGTH, UnsafeURL, check_image_url

#: Letters, digits and ``- _ . : ~``, 1 to 128 characters: UUIDs, ULIDs, ``game:42.1``. Not only
#: dots: ``.`` and ``..`` are dot-segments in the callback URL's path, which would move it elsewhere.
REQUEST_ID_PATTERN = re.compile(r"(?!\.+$)[A-Za-z0-9\-_.:~]{1,128}")


def unescape_url(value: str) -> str:
    """Undo the HTML escaping some callers apply to URLs (``https:&#x2F;&#x2F;...``)."""
    if "&" in value:
        value = html.unescape(value)
        # The original service also replaced these after unescaping; kept for callers that double-escape.
        for escaped, plain in (("&#x2F;", "/"), ("&#x3D;", "="), ("&amp;", "&")):
            value = value.replace(escaped, plain)
    return value.strip()


def validate_request_id(value: str) -> None:
    """Reject request ids outside the allowed alphabet and length, saying why."""
    if not value:
        raise ValidationError("x-request-id must not be empty")
    if len(value) > 128:
        raise ValidationError(f"x-request-id is {len(value)} characters long; at most 128 are allowed")
    if not value.strip("."):
        raise ValidationError("x-request-id must not be only dots: it names a path segment of the callback URL")
    if not REQUEST_ID_PATTERN.fullmatch(value):
        raise ValidationError("x-request-id may only hold letters, digits and - _ . : ~")


def _settings_tuple(name: str) -> tuple[str, ...]:
    return getattr(current_app.extensions["i2v"]["settings"], name) if has_app_context() else ()


def validate_image_url(value: str) -> None:
    """Public http(s) URLs only (hosts in ``IMAGE_HOST_ALLOWLIST`` excepted), or this service's own uploads.

    An upload's URL is taken whatever its host (the worker reads it from the media store), as long
    as the upload is still stored and every provider that has to fetch it can.
    """
    problem = upload_url_problem(value)
    if problem is not None:
        if problem:
            raise ValidationError(problem)
        return
    try:
        check_image_url(value, _settings_tuple("image_host_allowlist"))
    except UnsafeURL as exc:
        raise ValidationError(str(exc)) from None


def upload_url_problem(url: str) -> str | None:
    """For one of this service's upload URLs, why it cannot be used ("" if it can); None for other URLs."""
    if not has_app_context():
        return None
    extensions = current_app.extensions["i2v"]
    settings = extensions["settings"]
    name = upload_name(url, settings.public_base_url)
    if name is None:
        return None
    reason = upload_reach_problem(settings)
    if reason:
        return reason
    if not MediaStore(settings, extensions["redis"]).upload_exists(name):
        return "this upload has expired (UPLOAD_TTL) or never existed; upload the image again"
    return ""


def validate_callback_url(value: str) -> None:
    """Well-formed http(s) URLs; whether the host is allowed is checked by the view."""
    try:
        check_image_url(value, _settings_tuple("callback_url_allowlist"))
    except UnsafeURL as exc:
        raise ValidationError(str(exc)) from None


class RequestHeadersSchema(Schema):
    """The headers of a submission."""

    class Meta:
        unknown = EXCLUDE

    request_id = fields.String(
        data_key="x-request-id",
        required=True,
        # The Regexp and Length document the rule in the spec; validate_request_id words the error.
        validate=[validate_request_id, validate.Length(1, 128), validate.Regexp(REQUEST_ID_PATTERN.pattern)],
        metadata={"description": "The caller's id for this request; the callback is sent for it."},
    )


class SubmitSchema(Schema):
    """The body of a submission."""

    class Meta:
        unknown = EXCLUDE

    image_id = fields.String(
        required=True,
        validate=[validate_image_url, validate.Length(1, MAX_URL_LENGTH)],
        metadata={"description": "Public URL of the image to animate (HTML-escaped URLs are accepted)."},
    )

    callback_url = fields.String(
        load_default=None,
        validate=validate_callback_url,
        metadata={"description": "Where to send this request's callback; only hosts in CALLBACK_URL_ALLOWLIST."},
    )

    @pre_load
    def _unescape(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for name in ("image_id", "callback_url"):
                if isinstance(data.get(name), str):
                    data[name] = unescape_url(data[name])
        return data


class SubmitReplySchema(Schema):
    """The reply to a submission."""

    message = fields.String(
        required=True, metadata={"example": "Video generation pipeline initialized | ETA: 1-8 minutes"}
    )
    request_id = fields.String(required=True)
    status = fields.String(metadata={"description": "Only on a repeated submission: the request's current status."})


class ProviderSchema(Schema):
    """Which provider makes the video and how far it is."""

    name = fields.String(required=True)
    job_id = fields.String(allow_none=True)
    progress = fields.Integer(allow_none=True, validate=validate.Range(0, 100))


class ErrorInfoSchema(Schema):
    """Why a request failed."""

    code = fields.String(required=True)
    message = fields.String(required=True)


class CallbackAttemptSchema(Schema):
    """One attempt to deliver a request's callback."""

    at = fields.String(required=True, metadata={"format": "date-time", "description": "When it was sent"})
    status_code = fields.Integer(allow_none=True, metadata={"description": "The receiver's answer; null if none came"})
    error = fields.String(allow_none=True, metadata={"description": "Why no answer came (a timeout, no connection)"})


class CallbackInfoSchema(Schema):
    """The state of a request's callback delivery."""

    status = fields.String(required=True, validate=validate.OneOf([s.value for s in CallbackStatus]))
    attempts = fields.Integer(required=True)
    last_status_code = fields.Integer(allow_none=True)
    next_attempt_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    history = fields.List(
        fields.Nested(CallbackAttemptSchema),
        required=True,
        metadata={"description": "The attempts, oldest first: the last 20 (a redelivery adds to them)"},
    )


class RequestStatusSchema(Schema):
    """A request's record as the status endpoint shows it."""

    request_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in Status]))
    stage = fields.String(allow_none=True, validate=validate.OneOf([s.value for s in Stage]))
    image_url = fields.String(required=True)
    prompt = fields.String(allow_none=True)
    provider = fields.Nested(ProviderSchema, required=True)
    video_url = fields.String(allow_none=True)
    title = fields.String(allow_none=True)
    error = fields.Nested(ErrorInfoSchema, allow_none=True)
    callback = fields.Nested(CallbackInfoSchema, required=True)
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    updated_at = fields.String(required=True, metadata={"format": "date-time"})
    stages = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    eta_seconds = fields.Integer(allow_none=True)


class ListQuerySchema(Schema):
    """The query of the request list."""

    class Meta:
        unknown = EXCLUDE

    status = fields.String(
        load_default=None,
        validate=validate.OneOf([s.value for s in Status]),
        metadata={"description": "Only requests with this status."},
    )
    limit = fields.Integer(
        load_default=20, validate=validate.Range(1, 100), metadata={"description": "Requests per page, 1-100."}
    )
    cursor = fields.String(
        load_default=None,
        validate=validate.Length(1, 256),
        metadata={"description": "The next_cursor of the previous page, as it came."},
    )


class RequestListSchema(Schema):
    """One page of the caller's requests, newest first."""

    requests = fields.List(fields.Nested(RequestStatusSchema), required=True)
    next_cursor = fields.String(
        required=True, allow_none=True, metadata={"description": "Pass as cursor for the next page; null at the end."}
    )


class UploadReplySchema(Schema):
    """Where an uploaded image is served, and until when."""

    url = fields.String(required=True, metadata={"description": "Use as image_id; served to anyone who has it."})
    expires_at = fields.String(required=True, metadata={"format": "date-time"})


class ServiceInfoSchema(Schema):
    """What ``GET /`` says about the service."""

    name = fields.String(required=True)
    version = fields.String(required=True)
    description = fields.String(required=True)
    endpoints = fields.List(fields.Dict(), required=True)


class HealthSchema(Schema):
    """A health answer."""

    status = fields.String(required=True)


class ReadySchema(Schema):
    """A readiness answer."""

    status = fields.String(required=True, validate=validate.OneOf(["ready", "not ready"]))
    redis = fields.String(required=True, validate=validate.OneOf(["ok", "unreachable"]))
    workers = fields.Integer(required=True)
    queue_depth = fields.Integer(allow_none=True)
    eviction_policy = fields.String(allow_none=True)
    warnings = fields.List(fields.String(), required=True)
