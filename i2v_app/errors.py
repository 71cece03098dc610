"""One error shape for every error the app returns: RFC 9457 ``application/problem+json``.

``type``, ``title``, ``status`` and ``detail`` always; ``request_id`` when the caller sent one;
``errors`` with per-field messages for validation failures. Never HTML, never a traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import marshmallow as ma
from flask import Flask, Request, Response, g, json, request
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from redis.exceptions import RedisError
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException, InternalServerError

from i2v_app.schemas import REQUEST_ID_PATTERN

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"


class ProblemSchema(ma.Schema):
    """An RFC 9457 problem document (documentation only; :func:`problem` builds the payload)."""

    type = ma.fields.String(metadata={"example": "about:blank"})
    title = ma.fields.String(metadata={"example": "Unprocessable Entity"})
    status = ma.fields.Integer(metadata={"example": 422})
    detail = ma.fields.String(metadata={"example": "image_id: Missing data for required field."})
    request_id = ma.fields.String()
    errors = ma.fields.Dict(metadata={"description": "Field errors, by location and field"})


def problem(
    status: int, detail: str, *, title: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or _title(status),
        "status": status,
        "detail": detail,
    }
    request_id = _request_id()
    if request_id:
        body["request_id"] = request_id
    body.update({key: value for key, value in extra.items() if value is not None})
    resp = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _request_id() -> str | None:
    """The caller's request id, only if it is well-formed (never echo hostile bytes)."""
    value = getattr(g, "request_id", None) or request.headers.get("x-request-id", "")
    return value if REQUEST_ID_PATTERN.fullmatch(value or "") else None


def _summarize(messages: Any, prefix: str = "") -> list[str]:
    """Flatten webargs' nested messages into ``field: message`` lines."""
    if isinstance(messages, dict):
        lines: list[str] = []
        for key, value in messages.items():
            # Locations (json, headers) are noise for the reader; field names are not.
            name = prefix if key in ("json", "headers", "query", "_schema") else f"{prefix}{key}"
            lines += _summarize(value, f"{name}." if name and isinstance(value, dict) else name)
        return lines
    if isinstance(messages, list):
        return [f"{prefix}: {m}" if prefix else str(m) for m in messages if not isinstance(m, dict | list)]
    return [f"{prefix}: {messages}" if prefix else str(messages)]


class SafeJSONParser(FlaskParser):
    """webargs' parser, answering 400 for JSON that Python cannot hold (too deep, huge numbers)."""

    def _raw_load_json(self, req: Request) -> Any:
        try:
            return super()._raw_load_json(req)
        except (RecursionError, ValueError) as exc:
            return self._handle_invalid_json_error(exc, req)


class ProblemApi(Api):
    """flask-smorest's Api, answering every HTTP error as a problem document."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        """Document the error responses with the content type they really have."""
        for status in HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_MIMETYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_MIMETYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        """Turn an ``HTTPException`` (``abort``, routing, validation) into a problem."""
        data = getattr(error, "data", None) or {}
        errors = data.get("errors") or data.get("messages")
        if "message" in data:
            detail = str(data["message"])
        elif errors:
            detail = "; ".join(_summarize(errors)) or error.description or ""
        else:
            detail = error.description or ""
        if isinstance(errors, dict) and set(errors) <= {"json", "headers", "query", "view_args"}:
            errors = {k: v for loc in errors.values() if isinstance(loc, dict) for k, v in loc.items()}
        headers = dict(data.get("headers") or {})
        if error.code == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods)
        return problem(error.code or 500, detail, title=error.name, headers=headers, errors=errors or None)


def register_error_handlers(app: Flask) -> None:
    """Answer failures outside the HTTP layer as problems too."""

    @app.errorhandler(RedisError)
    def redis_unavailable(exc: RedisError) -> Response:
        log.error("redis unavailable: %s", type(exc).__name__)
        return problem(503, "The request store is unavailable; try again shortly.", headers={"Retry-After": "5"})

    @app.errorhandler(InternalServerError)
    def internal_error(exc: InternalServerError) -> Response:
        original = getattr(exc, "original_exception", None)
        if original is not None:
            log.error("unhandled %s", type(original).__name__, exc_info=original)
        return problem(500, "The service failed to handle the request.")
