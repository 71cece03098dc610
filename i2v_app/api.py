"""The i2v API: submit an image, read a request's status, cancel it, send its callback again."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Response, g, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from i2v_app import eta, lifecycle, services
from i2v_app.errors import SafeJSONParser
from i2v_app.schemas import (
    REQUEST_ID_PATTERN,
    ListQuerySchema,
    RequestHeadersSchema,
    RequestListSchema,
    RequestStatusSchema,
    SubmitReplySchema,
    SubmitSchema,
)
from jobs.identity import KEY_PREFIX
from jobs.states import Status
from jobs.store import Position, Record

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


def estimate(record: Record, load: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """Expected and latest seconds to the callback, from the queue and the timing settings.

    ``load`` is the record's (requests ahead, workers) when the caller read it already.
    """
    if record.terminal:
        return None
    if record.status != Status.QUEUED:
        ahead, workers = 0, 1
    else:
        ahead, workers = load or services.queue_load(record)
    return eta.estimate(services.settings(), record, ahead, workers)


def present(record: Record, load: tuple[int, int] | None = None) -> dict[str, Any]:
    """A record as the status endpoint shows it (``load``: see :func:`estimate`)."""
    error = {"code": record.error_code, "message": record.error_message or ""} if record.error_code else None
    expected = estimate(record, load)
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
            "history": record.callback_history,
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


#: Caches may keep a status reply only for the key that read it, and must ask before reusing it.
STATUS_HEADERS = {
    "ETag": {"description": "Weak; changes with every write of the stored request", "schema": {"type": "string"}},
    "Cache-Control": {"description": "private, no-cache", "schema": {"type": "string"}},
    "Vary": {"description": "Authorization", "schema": {"type": "string"}},
}


def record_etag(record: Record) -> str:
    """A weak ETag of the stored record: its key, version and last write (never the per-read ETA)."""
    # updated_at as well as the version: records written before versions existed all read as 1.
    text = f"{record.key}\x00{record.version}\x00{record.updated_at}"
    return 'W/"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def status_headers(record: Record) -> dict[str, str]:
    """The caching headers of a status reply."""
    return {"ETag": record_etag(record), "Cache-Control": "private, no-cache", "Vary": "Authorization"}


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
    @blp.response(200, RequestStatusSchema, headers=STATUS_HEADERS)
    @blp.alt_response(304, response="NOT_MODIFIED")
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, request_id: str) -> Response | tuple[dict[str, Any], int, dict[str, str]]:
        """Read a request's status, stage, result, callback delivery and ETA.

        The weak ``ETag`` changes whenever the stored request does (not when only the ETA moves):
        send it back as ``If-None-Match`` to be answered 304 while nothing changed.
        """
        record = find(request_id)
        headers = status_headers(record)
        if request.if_none_match.contains_weak(headers["ETag"].removeprefix("W/").strip('"')):
            return Response(status=304, headers=headers)
        return present(record), 200, headers

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


def encode_cursor(position: Position) -> str:
    """An opaque cursor for a position in the caller's index."""
    ms, key = position
    return base64.urlsafe_b64encode(f"{ms}:{key.removeprefix(KEY_PREFIX)}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor holds, or a 422 problem for anything :func:`encode_cursor` did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        ms, _, digest = text.partition(":")
        if ms.isdigit() and len(digest) == 40 and all(c in "0123456789abcdef" for c in digest):
            return int(ms), KEY_PREFIX + digest
    except (binascii.Error, ValueError):
        pass
    abort(422, message="cursor: not a cursor this service gave out", errors={"cursor": ["not a valid cursor"]})
    raise AssertionError("abort raises")  # for the type checker


@blp.route("")
class RequestList(MethodView):
    """The caller's requests."""

    @secured
    @blp.arguments(ListQuerySchema, location="query")
    @blp.response(200, RequestListSchema)
    @blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List this API key's requests, newest first.

        Pages hold up to ``limit`` requests (default 20, at most 100); pass ``next_cursor`` back as
        ``cursor`` for the next one. Requests created before this list existed are missing until
        ``flask i2v reindex`` runs once; requests whose record expired are gone.
        """
        after = decode_cursor(query["cursor"]) if query["cursor"] else None
        page = services.store().list_owned(owner(), limit=query["limit"], status=query["status"], after=after)
        loads = services.queue_loads(page.records)  # one round trip for the whole page's ETAs
        return {
            "requests": [present(record, loads.get(record.key)) for record in page.records],
            "next_cursor": encode_cursor(page.next_position) if page.next_position else None,
        }
