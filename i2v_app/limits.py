"""Request limits at the edge: body size and type, and a rate limit per API key (one Redis round trip).

The backlog cap (``MAX_QUEUED``) is checked where requests are created (``lifecycle.submit``), so
a repeated submission is answered even while the backlog is full.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, g, request

from config import Settings
from i2v_app import services
from i2v_app.errors import problem

SUBMIT_PATH = "/api/v1/i2v"
#: Routes that read their body themselves, with their own cap and deadline (i2v_app.uploads).
OWN_BODY_LIMIT = frozenset({"/api/v1/uploads"})


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
            pass  # the view reads the body itself; the rate limit below still counts it
        elif (length and length > settings.max_body_bytes) or (
            chunked and len(request.get_data(cache=True)) >= settings.max_body_bytes
        ):
            return problem(413, f"The body is larger than {settings.max_body_bytes} bytes.")
        if settings.rate_limit is None:
            return None
        count, window = settings.rate_limit
        now = time.time()
        slot = int(now // window)
        key = f"i2v:rl:{getattr(g, 'owner', '')}:{slot}"
        with services.redis().pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, window + 1)
            used, _ = pipe.execute()
        if used > count:
            retry = max(1, math.ceil((slot + 1) * window - now))
            return problem(
                429,
                f"Rate limit of {count} requests per {window} s exceeded for this API key.",
                headers={"Retry-After": str(retry)},
            )
        return None
