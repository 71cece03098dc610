"""The i2v API: submit an image, read a request's status."""

from __future__ import annotations

from typing import Any

from flask import g, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from i2v_app import services
from i2v_app.schemas import (
    REQUEST_ID_PATTERN,
    RequestHeadersSchema,
    RequestStatusSchema,
    SubmitReplySchema,
    SubmitSchema,
)
from jobs.store import Record, enqueue_pipeline

blp = Blueprint("i2v", __name__, url_prefix="/api/v1/i2v", description="Image-to-video requests")


def owner() -> str:
    """Whose requests these are: the API key's identity once keys exist, else nobody in particular."""
    return getattr(g, "owner", "")


def eta_message() -> str:
    """The submit reply's message, with the ETA from the configured timing."""
    low, high = services.settings().eta_minutes()
    return f"Video generation pipeline initialized | ETA: {low}-{high} minutes"


def present(record: Record) -> dict[str, Any]:
    """A record as the status endpoint shows it."""
    error = {"code": record.error_code, "message": record.error_message or ""} if record.error_code else None
    return {
        "request_id": record.request_id,
        "status": record.status,
        "stage": record.stage,
        "image_url": record.image_url,
        "prompt": record.prompt,
        "provider": {"name": record.provider, "job_id": record.provider_job_id, "progress": record.provider_progress},
        "video_url": record.video_url,
        "title": record.title,
        "error": error,
        "callback": {
            "status": record.callback_status,
            "attempts": record.callback_attempts,
            "last_status_code": record.callback_last_status_code,
            "next_attempt_at": record.callback_next_attempt_at,
        },
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "stages": record.stages,
        "eta_seconds": None,
    }


def find(request_id: str) -> Record:
    """The caller's record for ``request_id``, or a 404 problem."""
    if not REQUEST_ID_PATTERN.fullmatch(request_id):
        abort(404, message="No request with that id: request ids hold 1-128 letters, digits and - _ . : ~")
    g.request_id = request_id
    record = services.store().get(owner(), request_id)
    if record is None:
        abort(404, message=f"No request with id {request_id!r}")
    return record


@blp.route("")
class Submissions(MethodView):
    """Submitting images."""

    @blp.arguments(RequestHeadersSchema, location="headers")
    @blp.arguments(SubmitSchema)
    @blp.response(202, SubmitReplySchema)
    @blp.alt_response(200, schema=SubmitReplySchema, description="Already submitted with this id: nothing new runs")
    @blp.alt_response(409, description="This request id was already used with a different image")
    def post(self, headers: dict[str, str], body: dict[str, str]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Start turning an image into a video.

        The reply comes at once; the video comes later by one callback to ``CALLBACK_API_URL`` for
        this ``x-request-id``. Submitting the same id and image again changes nothing.
        """
        request_id = headers["request_id"]
        g.request_id = request_id
        record = Record(request_id=request_id, image_url=body["image_id"], owner=owner())
        settings, queue = services.settings(), services.queue()
        stored, created = services.store().create(
            record, lambda pipe: enqueue_pipeline(queue, record, settings.job_timeout, pipe)
        )
        location = {"Location": url_for("i2v.RequestStatus", request_id=request_id)}
        reply = {"message": eta_message(), "request_id": request_id}
        if created:
            return reply, 202, location
        if stored.image_url != record.image_url:
            abort(409, message=f"Request id {request_id!r} was already used with a different image")
        return {**reply, "status": stored.status}, 200, location


@blp.route("/<string:request_id>")
class RequestStatus(MethodView):
    """One request."""

    @blp.response(200, RequestStatusSchema)
    @blp.alt_response(404, description="No such request")
    def get(self, request_id: str) -> dict[str, Any]:
        """Read a request's status, stage, result and callback delivery."""
        return present(find(request_id))
