"""rq-dashboard at ``/rq`` (``RQ_DASHBOARD=1``): an admin console behind its own keys.

It shows every tenant's request ids and tracebacks, so API keys do not open it: ``I2V_ADMIN_KEYS``
does, as ``Authorization: Bearer <key>`` or HTTP Basic with any user name and the key as password
(browsers cannot send a Bearer token by themselves). Its actions (requeue, delete, empty, compact)
change the queue: they are refused unless ``RQ_DASHBOARD_ACTIONS=1``, and then taken only as POSTs
from the dashboard's own pages, so that another site cannot make an admin's browser send them.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

import rq_dashboard
from flask import Flask, Response, request

from config import Settings
from i2v_app.auth import bearer_token, identify
from i2v_app.errors import problem

PREFIX = "/rq"
#: rq-dashboard's endpoints that change the queue (some of them also answer GET).
ACTIONS = frozenset(
    f"rq_dashboard.{name}"
    for name in ("delete_job_view", "requeue_job_view", "requeue_all", "empty_queue", "compact_queue")
)


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


def same_origin() -> bool:
    """Whether this request comes from a page of this site (``Origin``, else ``Sec-Fetch-Site``).

    Browsers send ``Origin`` with every POST, so a request without it and without a same-origin
    ``Sec-Fetch-Site`` did not come from the dashboard's own page. Only the host is compared: behind
    a TLS-terminating proxy the scheme the app sees is not the one the browser used.
    """
    origin = request.headers.get("Origin")
    if origin:
        return origin != "null" and urlsplit(origin).netloc.lower() == request.host.lower()
    return request.headers.get("Sec-Fetch-Site") == "same-origin"


def install(app: Flask, settings: Settings) -> None:
    """Mount the dashboard when enabled; every page needs an admin key, every action more."""
    if not settings.rq_dashboard:
        return
    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    # rq-dashboard's own switch as a second line: its delete and empty views do nothing when set.
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = not settings.rq_dashboard_actions
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)

    @app.before_request
    def guard() -> Response | None:
        if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
            return None
        # Development without authentication is loopback-only (the web refuses to listen elsewhere).
        if not (settings.auth_disabled and settings.development):
            key = _presented_key()
            if not (settings.admin_key_digests and key and identify(key, settings.admin_key_digests)):
                return problem(
                    401,
                    "The dashboard needs an admin key from I2V_ADMIN_KEYS (HTTP Basic: any user name, the key as "
                    "password).",
                    headers={"WWW-Authenticate": 'Basic realm="i2v dashboard"'},
                )
        if request.endpoint not in ACTIONS:
            return None
        if not settings.rq_dashboard_actions:
            return problem(403, "Dashboard actions are off: set RQ_DASHBOARD_ACTIONS=1 to requeue, delete or empty.")
        if request.method != "POST" or not same_origin():
            return problem(403, "Dashboard actions are taken only as POSTs from the dashboard's own pages.")
        return None
