"""The i2v API: submit an image, read a request's status, cancel it, send its callback again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from i2v_app import eta, lifecycle, services
from i2v_app.errors import SafeJSONParser
from i2v_app.schemas import (
    REQUEST_ID_PATTERN,
    RequestHeadersSchema,
    RequestStatusSchema,
    SubmitReplySchema,
    SubmitSchema,
)
from jobs.states import Status
from jobs.store import Record

blp = Blueprint("i2v", __name__, url_prefix="/api/v1/i2v", description="Image-to-video requests")
blp.ARGUMENTS_PARSER = SafeJSONParser()


def secured(view: Callable[..., Any]) -> Callable[..., Any]:
    """Document that an operation needs an API key (see i2v_app.auth), and the errors every one has."""
    # One documentation layer: each flask-smorest decorator is also a call on every request.
    errors = {401: "UNAUTHORIZED", 429: "TOO_MANY_REQUESTS", 503: "SERVICE_UNAVAILABLE"}
    return blp.doc(security=[{"bearerAuth": []}], responses=errors)(view)


def owner() -> str:
    """Whose requests these are: the calling API key's id ("" when authentication is disabled)."""
    return getattr(g, "owner", "")


def estimate(record: Record) -> tuple[int, int] | None:
    """Expected and latest seconds to the callback, from the queue and the timing settings."""
    if record.terminal:
        return None
    ahead, workers = services.queue_load(record) if record.status == Status.QUEUED else (0, 1)
    return eta.estimate(services.settings(), record, ahead, workers)


def present(record: Record) -> dict[str, Any]:
    """A record as the status endpoint shows it."""
    error = {"code": record.error_code, "message": record.error_message or ""} if record.error_code else None
    expected = estimate(record)
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
        "eta_seconds": expected[0] if expected else None,
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


def check_callback_url(url: str | None) -> None:
    """A per-request callback URL is honoured only for hosts in ``CALLBACK_URL_ALLOWLIST``."""
    if url is None:
        return
    allowed = services.settings().callback_url_allowlist
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    if host not in allowed and netloc not in allowed:
        abort(
            422,
            message="callback_url's host is not in CALLBACK_URL_ALLOWLIST",
            errors={"callback_url": ["host not allowed"]},
        )


@blp.route("")
class Submissions(MethodView):
    """Submitting images."""

    @secured
    # Headers first: a bad x-request-id is reported even when the body is bad too. Schema
    # instances, so that webargs does not build new ones for every submission.
    @blp.arguments(RequestHeadersSchema(), location="headers")
    @blp.arguments(SubmitSchema())
    @blp.doc(
        responses={
            202: {"description": "Accepted", "content": {"application/json": {"schema": SubmitReplySchema}}},
            200: {
                "description": "Already submitted with this id: nothing new runs",
                "content": {"application/json": {"schema": SubmitReplySchema}},
            },
            409: "CONFLICT",
            400: "BAD_REQUEST",
            413: "REQUEST_ENTITY_TOO_LARGE",
            415: "UNSUPPORTED_MEDIA_TYPE",
        }
    )
    def post(self, headers: dict[str, str], body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Start turning an image into a video.

        The reply comes at once; the video comes later by one callback for this
        ``x-request-id`` (to ``CALLBACK_API_URL``, or to ``callback_url`` when its host is
        allowed). Submitting the same id and image again starts nothing new. An id is
        answered 409 when it was used with another image, or when another API key's request
        already uses it at the same callback URL.
        """
        request_id, callback = headers["request_id"], body.get("callback_url")
        g.request_id = request_id
        check_callback_url(callback)
        record = Record(request_id=request_id, image_url=body["image_id"], owner=owner(), callback_url=callback)
        try:
            outcome = lifecycle.submit(record)
        except lifecycle.Backlogged as exc:
            abort(503, message=str(exc), headers={"Retry-After": "60"})
        except lifecycle.InUse as exc:
            abort(409, message=str(exc))
        stored = outcome.record
        location = {"Location": f"{blp.url_prefix}/{request_id}"}
        if not outcome.created and stored.image_url != record.image_url:
            abort(409, message=f"Request id {request_id!r} was already used with a different image")
        if outcome.created:
            expected, latest = eta.estimate(services.settings(), stored, outcome.ahead, outcome.workers) or (0, 0)
            return {"message": eta.eta_text(expected, latest), "request_id": request_id}, 202, location
        expected, latest = estimate(stored) or (0, 0)
        reply = {"message": eta.eta_text(expected, latest), "request_id": request_id, "status": stored.status}
        return reply, 200, location


@blp.route("/<string:request_id>")
class RequestStatus(MethodView):
    """One request."""

    @secured
    @blp.response(200, RequestStatusSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, request_id: str) -> dict[str, Any]:
        """Read a request's status, stage, result, callback delivery and ETA."""
        return present(find(request_id))

    @secured
    @blp.response(202, RequestStatusSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def delete(self, request_id: str) -> tuple[dict[str, Any], int]:
        """Cancel a request.

        A queued request never reaches a provider; a running one stops at its next step. The
        request ends ``canceled`` and exactly one FAILED callback goes out.
        """
        try:
            return present(lifecycle.cancel(find(request_id))), 202
        except lifecycle.Conflict as exc:
            abort(409, message=str(exc))


@blp.route("/<string:request_id>/callback")
class Redelivery(MethodView):
    """A request's callback."""

    @secured
    @blp.response(202, RequestStatusSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def post(self, request_id: str) -> tuple[dict[str, Any], int]:
        """Send a callback again after it ran out of retries (same ``webhook-id``)."""
        try:
            return present(lifecycle.redeliver(find(request_id))), 202
        except lifecycle.Conflict as exc:
            abort(409, message=str(exc))
