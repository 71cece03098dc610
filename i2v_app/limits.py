"""Request limits at the edge: body size and type, and a rate limit per API key (Flask-Limiter on Redis).

The backlog cap (``MAX_QUEUED``) is checked where requests are created (``lifecycle.submit``), so
a repeated submission is answered even while the backlog is full.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, g, request
from flask_limiter import Limiter, RateLimitExceeded

from config import Settings
from i2v_app.errors import problem

SUBMIT_PATH = "/api/v1/i2v"
#: Routes that read their body themselves, with their own cap and deadline (i2v_app.uploads).
OWN_BODY_LIMIT = frozenset({"/api/v1/uploads"})
API_PREFIX = "/api/"
#: Prefix of the rate-limit counters in Redis.
RATE_KEY_PREFIX = "i2v:rl"


def install(app: Flask, settings: Settings) -> None:
    """Register the limit checks (after authentication, which sets the owner)."""
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    @app.before_request
    def check_limits() -> Response | None:
        if not request.path.startswith("/api/"):
            return None
        submitting = request.method == "POST" and request.path == SUBMIT_PATH
        if submitting and request.mimetype != "application/json":
            return problem(415, "Send the body as JSON with 'Content-Type: application/json'.")
        length = request.content_length
        # A chunked body has no declared length: werkzeug stops reading at the cap, so a body that
        # fills it exactly was cut short.
        chunked = length is None and request.method in ("POST", "PUT", "PATCH")
        if request.path in OWN_BODY_LIMIT:
            pass  # the view reads the body itself; the rate limit still counts it
        elif (length and length > settings.max_body_bytes) or (
            chunked and len(request.get_data(cache=True)) >= settings.max_body_bytes
        ):
            return problem(413, f"The body is larger than {settings.max_body_bytes} bytes.")
        return None

    if settings.rate_limit is not None:
        # Registered after check_limits, so a refused body or type is not counted.
        install_rate_limit(app, settings)


def rate_key() -> str:
    """Whose count a request adds to: its API key's id; one shared count when authentication is off."""
    # Flask-Limiter skips a limit whose key is empty, and the owner is "" without authentication.
    return getattr(g, "owner", "") or "anonymous"


def outside_api() -> bool:
    """Only ``/api/`` requests count towards the rate limit."""
    return not request.path.startswith(API_PREFIX)


def install_rate_limit(app: Flask, settings: Settings) -> Limiter:
    """``RATE_LIMIT`` requests per window per API key, over every ``/api/`` request, counted in Redis.

    One fixed-window counter per key (a Lua ``INCRBY`` + ``EXPIRE``, one round trip per request),
    shared by every web process through the app's Redis connection pool; the window starts at the
    key's first request in it. Past the limit: a 429 problem with ``Retry-After``.
    """
    assert settings.rate_limit is not None
    count, window = settings.rate_limit
    limiter = Limiter(
        key_func=rate_key,
        # An application limit is one count for all routes, as RATE_LIMIT means.
        application_limits=[f"{count} per {window} second"],
        strategy="fixed-window",
        storage_uri=settings.redis_url,
        storage_options={
            "connection_pool": app.extensions["i2v"]["redis"].connection_pool,
            "key_prefix": RATE_KEY_PREFIX,
        },
        # Requests that match no route (a 404 under /api/) count too: without an identity
        # Flask-Limiter would exempt them.
        request_identifier=lambda: request.endpoint or "unmatched",
    )
    limiter.request_filter(outside_api)
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def too_many_requests(_exc: RateLimitExceeded) -> Response:
        limit = limiter.current_limit
        # window[0] is the moment the key's counter expires (RequestLimit.reset_at adds a second).
        retry = max(1, math.ceil(limit.window[0] - time.time())) if limit else window
        return problem(
            429,
            f"Rate limit of {count} requests per {window} s exceeded for this API key.",
            headers={"Retry-After": str(retry)},
        )

    return limiter
