"""rq-dashboard at ``/rq`` (``RQ_DASHBOARD=1``), behind the API keys.

Browsers cannot send a Bearer token by themselves, so the dashboard also takes HTTP Basic
authentication with any user name and an API key as the password.
"""

from __future__ import annotations

import base64
import binascii

import rq_dashboard
from flask import Flask, Response, request

from config import Settings
from i2v_app.auth import bearer_token, identify
from i2v_app.errors import problem

PREFIX = "/rq"


def _presented_key() -> str | None:
    token = bearer_token()
    if token:
        return token
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded).decode().partition(":")[2] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def install(app: Flask, settings: Settings) -> None:
    """Mount the dashboard when enabled; every page of it needs an API key."""
    if not settings.rq_dashboard:
        return
    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)

    @app.before_request
    def guard() -> Response | None:
        if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
            return None
        if settings.auth_disabled and settings.development:
            return None
        key = _presented_key()
        if settings.api_key_digests and key and identify(key, settings.api_key_digests):
            return None
        return problem(
            401,
            "The dashboard needs an API key (HTTP Basic: any user name, the key as password).",
            headers={"WWW-Authenticate": 'Basic realm="i2v dashboard"'},
        )
