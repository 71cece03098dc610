"""API keys: ``Authorization: Bearer <key>`` on ``/api/v1/*``; everything else is public.

Keys are compared as SHA-256 digests in constant time, so neither timing nor the configuration
(which may hold only digests) gives a key away. A request's owner is the key's id (a prefix of
its digest): records belong to the key that created them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from flask import Flask, Response, g, request

from config import Settings
from i2v_app.errors import problem

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/api/"
CHALLENGE = 'Bearer realm="i2v"'


def key_id(digest: str) -> str:
    """The public identity of a key: enough of its digest to tell keys apart, never the key."""
    return "key-" + digest[:16]


def identify(presented: str, digests: tuple[str, ...]) -> str | None:
    """The key id of ``presented`` if it is one of the configured keys, else None."""
    digest = hashlib.sha256(presented.encode()).hexdigest()
    match = None
    for candidate in digests:  # no early exit: every key costs the same time
        if hmac.compare_digest(digest, candidate):
            match = candidate
    return key_id(match) if match else None


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def install(app: Flask, settings: Settings) -> None:
    """Guard ``/api/*`` with API keys (or explicitly not, with ``I2V_AUTH_DISABLED=1``)."""
    if settings.auth_disabled:
        log.warning("authentication is disabled (I2V_AUTH_DISABLED=1): anyone can submit requests")
    elif not settings.api_key_digests:
        log.warning("no I2V_API_KEYS configured: /api/v1 refuses requests until keys are set")

    @app.before_request
    def authenticate() -> Response | None:
        g.owner = ""
        if not request.path.startswith(PROTECTED_PREFIX):
            return None
        if settings.auth_disabled:
            return None
        if not settings.api_key_digests:
            return problem(503, "No API keys are configured: set I2V_API_KEYS (or I2V_AUTH_DISABLED=1 for local runs).")
        token = bearer_token()
        owner = identify(token, settings.api_key_digests) if token else None
        if owner is None:
            detail = "Send a valid API key as 'Authorization: Bearer <key>'."
            return problem(401, detail, headers={"WWW-Authenticate": CHALLENGE})
        g.owner = owner
        return None
