"""A fake of GAME's callback receiver: ``POST /requests/{request_id}/callback``.

It also takes ``POST /hooks/{request_id}`` (and any extra patterns given) so that a full callback
URL template can be tested.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.helpers import wait_for

from .base import (
    FakeServer,
    Headers,
    Recorded,
    Response,
    Route,
    is_json_content_type,
    json_response,
    route,
)

CALLBACK_PATTERNS = (r"/requests/(?P<request_id>[^/]+)/callback", r"/hooks/(?P<request_id>[^/]+)")
SIGNATURE_TOLERANCE = 300  # seconds, per Standard Webhooks


@dataclass
class Callback:
    """One callback the receiver accepted (or refused: for its key in ``rejected``, else in ``refused``)."""

    request_id: str
    path: str
    headers: Headers
    json: Any
    body: bytes
    at: float
    signature_valid: bool | None = None  # None: the fake was given no signing secret
    #: Why the receiver refused it (content type or body); empty for an accepted callback.
    refusal: list[str] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        """``data.status`` of the body (``COMPLETED`` or ``FAILED``), if present."""
        data = self.json.get("data") if isinstance(self.json, dict) else None
        return data.get("status") if isinstance(data, dict) else None

    @property
    def url(self) -> str | None:
        """``data.output.url`` of a success body."""
        return self._output().get("url")

    @property
    def title(self) -> str | None:
        """``data.output.title`` of a success body."""
        return self._output().get("title")

    def _output(self) -> dict[str, Any]:
        data = self.json.get("data") if isinstance(self.json, dict) else None
        output = data.get("output") if isinstance(data, dict) else None
        return output if isinstance(output, dict) else {}

    def problems(self) -> list[str]:
        """How the body departs from the success or failure shape of the contract."""
        return payload_problems(self.json)


def payload_problems(obj: Any) -> list[str]:
    """Check a callback body against the two documented shapes (empty list: conforming)."""
    if not isinstance(obj, dict) or set(obj) != {"data"} or not isinstance(obj["data"], dict):
        return ['body must be exactly {"data": {...}}']
    data = obj["data"]
    if set(data) != {"addToInventory", "status", "output"}:
        return [f"data must have exactly addToInventory, status, output; has {sorted(data)}"]
    if data["status"] == "COMPLETED":
        problems = []
        if data["addToInventory"] is not True:
            problems.append("addToInventory must be true on success")
        output = data["output"]
        if not isinstance(output, dict) or set(output) != {"title", "type", "category", "url"}:
            return [*problems, "output must have exactly title, type, category, url"]
        if output["type"] != "MEDIA":
            problems.append('output.type must be "MEDIA"')
        if output["category"] != "MARKETING_VIDEO":
            problems.append('output.category must be "MARKETING_VIDEO"')
        if not isinstance(output["title"], str) or not output["title"]:
            problems.append("output.title must be a non-empty string")
        if not isinstance(output["url"], str) or not output["url"].startswith(("http://", "https://")):
            problems.append("output.url must be an http(s) URL")
        return problems
    if data["status"] == "FAILED":
        problems = []
        if data["addToInventory"] is not False:
            problems.append("addToInventory must be false on failure")
        if data["output"] is not None:
            problems.append("output must be null on failure")
        return problems
    return [f'status must be "COMPLETED" or "FAILED", got {data["status"]!r}']


def verify_signature(secret: str, headers: Headers, body: bytes, now: float | None = None) -> bool:
    """Check Standard Webhooks headers against a ``whsec_...`` secret."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return False
    try:
        ts = int(timestamp)
        key = base64.b64decode(secret.removeprefix("whsec_"))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > SIGNATURE_TOLERANCE:
        return False
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    for entry in signatures.split():
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


class FakeGame(FakeServer):
    """GAME's callback endpoint. Route: ``callback``.

    Args:
        api_key: the ``x-api-key`` value the receiver accepts.
        require_key: answer 401 to a wrong or missing key (those go to ``rejected``).
        check_body: answer 415 to a body not sent as ``application/json``, 400 to one that is not
            JSON and 422 to JSON that is not the contract's success or failure shape (those go to
            ``refused``). Off only where the fake stands in for some other webhook receiver.
        signing_secret: if given, each callback's ``signature_valid`` tells whether its Standard
            Webhooks signature checks out (the answer does not depend on it).
        extra_patterns: more path regexes with a ``request_id`` group to accept.
    """

    def __init__(
        self,
        api_key: str = "game_test",
        *,
        require_key: bool = True,
        check_body: bool = True,
        signing_secret: str | None = None,
        extra_patterns: tuple[str, ...] = (),
    ) -> None:
        self.api_key = api_key
        self.require_key = require_key
        self.check_body = check_body
        self.signing_secret = signing_secret
        self._patterns = (*CALLBACK_PATTERNS, *extra_patterns)
        super().__init__()
        self._defaults = {"require_key": require_key, "check_body": check_body, "signing_secret": signing_secret}
        self.reset_state()

    def reset_state(self) -> None:
        """Forget callbacks; restore constructor configuration."""
        with self.lock:
            self.require_key = self._defaults["require_key"]
            self.check_body = self._defaults["check_body"]
            self.signing_secret = self._defaults["signing_secret"]
            self.reply: dict[str, Any] = {"ok": True}
            self._callbacks: list[Callback] = []
            self._rejected: list[Callback] = []
            self._refused: list[Callback] = []

    def callback_url_base(self) -> str:
        """The base form of the callback setting: ``{url}/requests``."""
        return f"{self.url}/requests"

    def callback_url_template(self) -> str:
        """The template form of the callback setting: ``{url}/hooks/{request_id}``."""
        return f"{self.url}/hooks/{{request_id}}"

    @property
    def callbacks(self) -> list[Callback]:
        """Callbacks answered 2xx, oldest first."""
        with self.lock:
            return list(self._callbacks)

    @property
    def rejected(self) -> list[Callback]:
        """Callbacks refused for a wrong or missing API key."""
        with self.lock:
            return list(self._rejected)

    @property
    def refused(self) -> list[Callback]:
        """Callbacks with the right key refused for their content type or body (see ``refusal``)."""
        with self.lock:
            return list(self._refused)

    def callbacks_for(self, request_id: str) -> list[Callback]:
        """Accepted callbacks of one request id."""
        with self.lock:
            return [c for c in self._callbacks if c.request_id == request_id]

    def wait_for_callbacks(self, n: int = 1, timeout: float = 10.0) -> list[Callback]:
        """Wait until at least ``n`` callbacks were accepted, and return them all."""

        def enough() -> list[Callback] | None:
            found = self.callbacks
            return found if len(found) >= n else None

        return wait_for(enough, timeout)

    # -- provider style --------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Every accepted callback path is the one route ``callback``."""
        return [route("callback", "POST", pattern, self._callback) for pattern in self._patterns]

    def unauthorized_response(self, req: Recorded) -> Response:
        """401 (the body is undocumented)."""
        return json_response(401, {"error": "Unauthorized"})

    # -- handler ---------------------------------------------------------------------------------

    def _callback(self, req: Recorded, m: re.Match[str]) -> Response:
        secret = self.signing_secret
        cb = Callback(
            request_id=unquote(m["request_id"]),
            path=req.path,
            headers=req.headers,
            json=req.json,
            body=req.body,
            at=req.at,
            signature_valid=None if secret is None else verify_signature(secret, req.headers, req.body),
        )
        key = req.headers.get("x-api-key")
        if self.require_key and (key is None or not hmac.compare_digest(key.encode(), self.api_key.encode())):
            with self.lock:
                self._rejected.append(cb)
            return self.unauthorized_response(req)
        refusal = self._refusal(req) if self.check_body else None
        if refusal is not None:
            status, cb.refusal = refusal
            with self.lock:
                self._refused.append(cb)
            return json_response(status, {"error": "; ".join(cb.refusal)})
        if req.json is None:
            return json_response(400, {"error": "Body must be JSON"})
        with self.lock:
            self._callbacks.append(cb)
            reply = self.reply
        return json_response(200, reply)

    @staticmethod
    def _refusal(req: Recorded) -> tuple[int, list[str]] | None:
        """The status and reasons to refuse a callback with, or None to accept it."""
        if not is_json_content_type(req):
            given = req.headers.get("content-type") or "none"
            return 415, [f"Content-Type must be application/json, got {given}"]
        if req.json is None:
            return 400, ["body must be JSON"]
        problems = payload_problems(req.json)
        return (422, problems) if problems else None
