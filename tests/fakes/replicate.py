"""A fake of Replicate's prediction API, faithful enough for the official ``replicate`` client.

Lifecycle of a prediction: ``starting`` for ``start_delay`` seconds, ``processing`` until ``duration``
seconds after creation, then its planned outcome. Status is derived from the clock on every read, so
no background thread drives it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from .base import (
    FakeServer,
    Fault,
    Recorded,
    Response,
    Route,
    bearer_token,
    is_json_content_type,
    iso,
    json_response,
    reason,
    route,
)

Outcome = Literal["succeeded", "failed", "canceled", "empty", "never"]
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "canceled", "empty", "never")
TERMINAL = ("succeeded", "failed", "canceled")

CLIP_OWNER = "pharmapsychotic"
CLIP_NAME = "clip-interrogator"
CLIP_VERSION = "8151e1c9f47e696fa316146a2e35812ccf79cfc9eba05b11c7f450155102af70"
CLIP_MODEL_ID = f"{CLIP_OWNER}/{CLIP_NAME}:{CLIP_VERSION}"
DEFAULT_CAPTION = "a plane flying over the sea, highly detailed"
DEFAULT_ERROR = "some model error"
THROTTLED_DETAIL = "Request was throttled. Your rate limit resets in ~{seconds}s."
#: Upstream limits: creates a minute, and every other call a minute.
CREATE_LIMIT = 600
OTHER_LIMIT = 3000
#: Seconds after a prediction finishes until upstream deletes its input and output.
RETENTION = 3600.0
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?(?:$|[,;\s])", re.IGNORECASE)
_URI = re.compile(r"^(https?://[^\s/]+|data:)")
_ERROR_TYPE = "https://replicate.com/docs/reference/http#errors"


@dataclass(frozen=True)
class ModelSpec:
    """A model version the fake knows: its input schema (OpenAPI properties) and default output."""

    owner: str
    name: str
    version: str
    properties: dict[str, dict[str, Any]]
    required: tuple[str, ...]
    default_output: Any
    output_schema: dict[str, Any]
    cog_version: str = "0.8.6"
    created_at: str = "2023-07-31T19:10:59.129373Z"

    @property
    def ref(self) -> str:
        """``owner/name``."""
        return f"{self.owner}/{self.name}"

    def openapi_schema(self) -> dict[str, Any]:
        """A minimal Cog-style OpenAPI schema; the client only reads ``Output`` from it."""
        return {
            "openapi": "3.0.2",
            "info": {"title": "Cog", "version": "0.1.0"},
            "paths": {},
            "components": {
                "schemas": {
                    "Input": {
                        "type": "object",
                        "title": "Input",
                        "required": list(self.required),
                        "properties": self.properties,
                    },
                    "Output": self.output_schema,
                }
            },
        }

    def version_json(self) -> dict[str, Any]:
        """The answer of ``GET /v1/models/{owner}/{name}/versions/{version}``."""
        return {
            "id": self.version,
            "created_at": self.created_at,
            "cog_version": self.cog_version,
            "openapi_schema": self.openapi_schema(),
        }

    def invalid_fields(self, inp: dict[str, Any]) -> list[dict[str, str]]:
        """Input problems in the ``invalid_fields`` form of a 422 (extra fields are ignored)."""
        problems = []
        for key in self.required:
            if key not in inp:
                problems.append(_field("required", f"input.{key}", f"{key} is required"))
        for key, value in inp.items():
            prop = self.properties.get(key)
            if prop is None:
                continue
            problem = _check_value(key, value, prop)
            if problem:
                problems.append(_field("invalid", f"input.{key}", problem))
        return problems


def _field(kind: str, name: str, description: str) -> dict[str, str]:
    return {"type": kind, "field": name, "description": description}


def _check_value(key: str, value: Any, prop: dict[str, Any]) -> str | None:
    kind = prop.get("type")
    if kind == "string" and not isinstance(value, str):
        return f"{key}: Invalid type. Expected: string, given: {type(value).__name__}"
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{key}: Invalid type. Expected: integer, given: {type(value).__name__}"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"{key}: Invalid type. Expected: number, given: {type(value).__name__}"
    if kind == "boolean" and not isinstance(value, bool):
        return f"{key}: Invalid type. Expected: boolean, given: {type(value).__name__}"
    if "enum" in prop and value not in prop["enum"]:
        allowed = ", ".join(f'"{v}"' for v in prop["enum"])
        return f"{key} must be one of the following: {allowed}"
    if prop.get("format") == "uri" and isinstance(value, str) and not _URI.match(value):
        return f"{key}: Does not match format 'uri'"
    if "minimum" in prop and isinstance(value, int | float) and value < prop["minimum"]:
        return f"{key}: Must be greater than or equal to {prop['minimum']}"
    if "maximum" in prop and isinstance(value, int | float) and value > prop["maximum"]:
        return f"{key}: Must be less than or equal to {prop['maximum']}"
    return None


CLIP_INTERROGATOR = ModelSpec(
    owner=CLIP_OWNER,
    name=CLIP_NAME,
    version=CLIP_VERSION,
    properties={
        "image": {"type": "string", "format": "uri", "title": "Image", "x-order": 0},
        "clip_model_name": {
            "type": "string",
            "title": "clip_model_name",
            "enum": ["ViT-L-14/openai", "ViT-H-14/laion2b_s32b_b79k", "ViT-bigG-14/laion2b_s39b_b160k"],
            "default": "ViT-L-14/openai",
            "x-order": 1,
        },
        "mode": {
            "type": "string",
            "title": "mode",
            "enum": ["best", "classic", "fast", "negative"],
            "default": "best",
            "x-order": 2,
        },
    },
    required=("image",),
    default_output=DEFAULT_CAPTION,
    output_schema={"type": "string", "title": "Output"},
)


@dataclass
class Plan:
    """How one prediction will unfold."""

    outcome: str = "succeeded"
    duration: float = 0.2
    output: Any = None  # None: the model's default output
    error: str = DEFAULT_ERROR
    start_delay: float | None = None  # None: a quarter of the duration

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @property
    def starting_for(self) -> float:
        """Seconds the prediction stays ``starting``."""
        return self.duration / 4 if self.start_delay is None else min(self.start_delay, self.duration)


@dataclass
class _Prediction:
    id: str
    spec: ModelSpec
    input: dict[str, Any]
    created: float
    plan: Plan
    webhook: str | None = None
    events_filter: list[str] | None = None
    canceled_at: float | None = None
    webhook_sent: bool = False
    timer: threading.Timer | None = field(default=None, repr=False)


@dataclass
class WebhookDelivery:
    """One webhook the fake POSTed (only when ``deliver_webhooks`` is on)."""

    url: str
    body: dict[str, Any]
    status: int | None
    error: str | None
    at: float


class FakeReplicate(FakeServer):
    """Replicate's HTTP API for predictions.

    Routes: ``create`` (``POST /v1/predictions`` and ``POST /v1/models/{owner}/{name}/predictions``),
    ``get``, ``cancel``, ``version`` (``GET /v1/models/{owner}/{name}/versions/{id}``), ``model``.

    Args:
        token: the API token the fake accepts (``Authorization: Bearer <token>``).
        duration: seconds from creation to the terminal state.
        outcome: ``succeeded``, ``failed``, ``canceled``, ``empty`` (succeeds with ``""``) or
            ``never`` (stays ``processing``).
        output: output of a succeeded prediction; ``None`` means the model's default caption.
        error: the ``error`` of a failed prediction.
        start_delay: seconds spent ``starting``; ``None`` means a quarter of ``duration``.
        max_wait: cap, in seconds, on how long a ``Prefer: wait`` create is held.
        models: model versions to know besides nothing; default: CLIP Interrogator only.
        deliver_webhooks: POST the final prediction to a create's ``webhook`` (local URLs only).
        webhook_secret: ``whsec_...`` secret to sign those deliveries with (Standard Webhooks).
        retention: seconds after a prediction finished until its input and output are removed
            (``data_removed`` true), as upstream does after an hour; tests shrink it.
        create_limit: creates allowed per ``limit_window`` (``None``: unlimited); beyond it a create
            gets a 429 whose detail says when the window resets.
        other_limit: every other call allowed per ``limit_window`` (``None``: unlimited).
        limit_window: length in seconds of the rate-limit windows (a minute upstream).
    """

    def __init__(
        self,
        token: str = "r8_test",
        *,
        duration: float = 0.2,
        outcome: Outcome = "succeeded",
        output: Any = None,
        error: str = DEFAULT_ERROR,
        start_delay: float | None = None,
        max_wait: float = 60.0,
        models: list[ModelSpec] | None = None,
        deliver_webhooks: bool = False,
        webhook_secret: str | None = None,
        retention: float = RETENTION,
        create_limit: int | None = CREATE_LIMIT,
        other_limit: int | None = OTHER_LIMIT,
        limit_window: float = 60.0,
    ) -> None:
        self.token = token
        self._defaults = {
            "duration": duration,
            "outcome": outcome,
            "output": output,
            "error": error,
            "start_delay": start_delay,
            "max_wait": max_wait,
            "deliver_webhooks": deliver_webhooks,
            "webhook_secret": webhook_secret,
            "retention": retention,
            "create_limit": create_limit,
            "other_limit": other_limit,
            "limit_window": limit_window,
        }
        self._initial_models = list(models) if models is not None else [CLIP_INTERROGATOR]
        super().__init__()
        self._changed = threading.Condition(self.lock)
        self.reset_state()

    # -- configuration and state -----------------------------------------------------------------

    def reset_state(self) -> None:
        """Forget predictions and queued plans; restore constructor configuration."""
        with self.lock:
            for p in getattr(self, "_preds", {}).values():
                if p.timer is not None:
                    p.timer.cancel()
            self.duration: float = self._defaults["duration"]
            self.outcome: str = self._defaults["outcome"]
            self.output: Any = self._defaults["output"]
            self.error: str = self._defaults["error"]
            self.start_delay: float | None = self._defaults["start_delay"]
            self.max_wait: float = self._defaults["max_wait"]
            self.deliver_webhooks: bool = self._defaults["deliver_webhooks"]
            self.webhook_secret: str | None = self._defaults["webhook_secret"]
            self.retention: float = self._defaults["retention"]
            self.create_limit: int | None = self._defaults["create_limit"]
            self.other_limit: int | None = self._defaults["other_limit"]
            self.limit_window: float = self._defaults["limit_window"]
            self._windows: dict[str, tuple[float, int]] = {}  # bucket -> (window start, calls in it)
            self.models: dict[str, ModelSpec] = {m.version: m for m in self._initial_models}
            self._preds: dict[str, _Prediction] = {}
            self._plans: deque[Plan] = deque()
            self._creates: list[dict[str, Any]] = []
            self._cancels: list[str] = []
            self._webhooks: list[WebhookDelivery] = []
            self._rng = random.Random(0)

    def add_model(self, spec: ModelSpec) -> None:
        """Know one more model version (also the latest of its model)."""
        with self.lock:
            self.models[spec.version] = spec

    def queue_plan(
        self,
        outcome: Outcome | None = None,
        *,
        duration: float | None = None,
        output: Any = None,
        error: str | None = None,
        start_delay: float | None = None,
    ) -> None:
        """Plan the next create (FIFO); unset fields take the fake's current configuration."""
        with self.lock:
            self._plans.append(
                Plan(
                    outcome=outcome or self.outcome,
                    duration=self.duration if duration is None else duration,
                    output=self.output if output is None else output,
                    error=self.error if error is None else error,
                    start_delay=self.start_delay if start_delay is None else start_delay,
                )
            )

    @property
    def predictions(self) -> dict[str, dict[str, Any]]:
        """Every prediction created, as its current JSON, by id."""
        with self.lock:
            now = time.time()
            return {pid: self._json(p, now) for pid, p in self._preds.items()}

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        """The current JSON of one prediction."""
        with self.lock:
            return self._json(self._preds[prediction_id], time.time())

    @property
    def creates(self) -> list[dict[str, Any]]:
        """The ``input`` of every accepted create, in order."""
        with self.lock:
            return [dict(i) for i in self._creates]

    @property
    def cancels(self) -> list[str]:
        """Prediction ids of every cancel request that named a known prediction."""
        with self.lock:
            return list(self._cancels)

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Webhooks POSTed by the fake."""
        with self.lock:
            return list(self._webhooks)

    # -- provider style --------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Replicate endpoints used by the official client."""
        seg = r"[^/]+"
        return [
            route("create", "POST", r"/v1/predictions", self._create),
            route(
                "create",
                "POST",
                rf"/v1/models/(?P<owner>{seg})/(?P<name>{seg})/predictions",
                self._create_for_model,
            ),
            route("get", "GET", rf"/v1/predictions/(?P<id>{seg})", self._get),
            route("cancel", "POST", rf"/v1/predictions/(?P<id>{seg})/cancel", self._cancel),
            route(
                "version",
                "GET",
                rf"/v1/models/(?P<owner>{seg})/(?P<name>{seg})/versions/(?P<version>{seg})",
                self._version,
            ),
            route("model", "GET", rf"/v1/models/(?P<owner>{seg})/(?P<name>{seg})", self._model),
        ]

    def authorized(self, req: Recorded) -> bool:
        """``Authorization: Bearer <token>``, the only scheme the contract names."""
        token = bearer_token(req)
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def admit(self, req: Recorded, route_name: str) -> Response | None:
        """Count the call against its minute; past the limit, the contract's 429."""
        bucket = "create" if route_name == "create" else "other"
        limit = self.create_limit if bucket == "create" else self.other_limit
        if limit is None:
            return None
        now = time.monotonic()
        with self.lock:
            start, count = self._windows.get(bucket, (now, 0))
            if now - start >= self.limit_window:
                start, count = now, 0
            if count >= limit:
                return self.throttled(start + self.limit_window - now)
            self._windows[bucket] = (start, count + 1)
        return None

    def throttled(self, resets_in: float, headers: dict[str, str] | None = None) -> Response:
        """A 429 as upstream sends it: problem JSON whose detail says when the limit resets."""
        detail = THROTTLED_DETAIL.format(seconds=max(1, math.ceil(resets_in)))
        return self.problem(429, detail, "Request was throttled", headers=headers)

    def unauthorized_response(self, req: Recorded) -> Response:
        """Replicate's 401."""
        return self.problem(401, "You did not pass a valid authentication token", "Unauthenticated")

    def error_response(self, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
        """RFC 7807 problem JSON."""
        return self.problem(status, detail, headers=headers)

    def problem(
        self,
        status: int,
        detail: str,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> Response:
        """An RFC 7807 answer: ``type, title, status, detail``."""
        body = {"type": _ERROR_TYPE, "title": title or reason(status), "status": status, "detail": detail}
        body.update(extra)
        return json_response(status, body, {"Content-Type": "application/problem+json", **(headers or {})})

    def fault_response(self, route_name: str | None, fault: Fault) -> Response:
        """A 429 fault without a body is upstream's throttle answer.

        Its detail says the limit resets in the fault's ``Retry-After`` seconds (1 if it gives none);
        the header itself is sent only if the fault has one, since the contract documents only the detail.
        """
        if fault.status == 429 and fault.body is None:
            retry_after = fault.headers.get("Retry-After") or fault.headers.get("retry-after") or "1"
            try:
                resets_in = float(retry_after)
            except ValueError:
                resets_in = 30.0
            return self.throttled(resets_in, dict(fault.headers))
        return super().fault_response(route_name, fault)

    def malformed_response(self, route_name: str | None, fault: Fault) -> Response:
        """``wrong_shape`` is a prediction-like object without ``id``/``version``/``model``."""
        if fault.malformed == "wrong_shape" and fault.body is None:
            return json_response(200, {"status": "succeeded", "result": DEFAULT_CAPTION})
        return super().malformed_response(route_name, fault)

    # -- handlers --------------------------------------------------------------------------------

    def _create(self, req: Recorded, _m: re.Match[str]) -> Response:
        body = req.json
        if not is_json_content_type(req):
            return self.problem(415, "Content-Type must be application/json", "Unsupported Media Type")
        if not isinstance(body, dict):
            return self.problem(400, "The request body is not a valid JSON object", "Bad Request")
        version = body.get("version")
        if not isinstance(version, str) or not version:
            return self._invalid([_field("required", "version", "version is required")])
        spec = self._resolve(version)
        if spec is None:
            return self.problem(
                422,
                "The specified version does not exist (or perhaps you don't have permission to use it?)",
                "Invalid version or not permitted",
            )
        return self._create_prediction(req, body, spec)

    def _create_for_model(self, req: Recorded, m: re.Match[str]) -> Response:
        body = req.json
        if not is_json_content_type(req):
            return self.problem(415, "Content-Type must be application/json", "Unsupported Media Type")
        if not isinstance(body, dict):
            return self.problem(400, "The request body is not a valid JSON object", "Bad Request")
        spec = self._latest(f"{m['owner']}/{m['name']}")
        if spec is None:
            return self.problem(404, "The requested resource could not be found.", "Not found")
        return self._create_prediction(req, body, spec)

    def _create_prediction(self, req: Recorded, body: dict[str, Any], spec: ModelSpec) -> Response:
        inp = body.get("input")
        if not isinstance(inp, dict):
            return self._invalid([_field("required", "input", "input is required")])
        problems = spec.invalid_fields(inp)
        if problems:
            return self._invalid(problems)
        webhook = body.get("webhook")
        if webhook is not None and not (isinstance(webhook, str) and _URI.match(webhook)):
            return self._invalid([_field("invalid", "webhook", "webhook must be a URL")])
        events = body.get("webhook_events_filter")
        if events is not None and (
            not isinstance(events, list) or not events or any(e not in WEBHOOK_EVENTS for e in events)
        ):
            allowed = ", ".join(WEBHOOK_EVENTS)
            return self._invalid([_field("invalid", "webhook_events_filter", f"events must be among {allowed}")])
        wait = self._prefer_wait(req.headers.get("prefer"))

        with self.lock:
            plan = self._plans.popleft() if self._plans else self._current_plan()
            pred = _Prediction(
                id=self._new_id(),
                spec=spec,
                input=inp,
                created=time.time(),
                plan=plan,
                webhook=webhook,
                events_filter=body.get("webhook_events_filter"),
            )
            self._preds[pred.id] = pred
            self._creates.append(inp)
            self._schedule_webhook(pred)

        if wait is not None:
            return self._wait_and_answer(pred, min(wait, self.max_wait))
        with self.lock:
            return json_response(201, self._json(pred, time.time()))

    def _wait_and_answer(self, pred: _Prediction, wait: float) -> Response:
        deadline = time.monotonic() + wait
        with self._changed:
            while not self._done(pred, time.time()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    # Upstream answers a sync create that outlives its wait as "starting",
                    # which is what tells the client to fall back to polling.
                    return json_response(201, self._json(pred, time.time(), force_status="starting"))
                self._changed.wait(min(left, 0.02))
            return json_response(201, self._json(pred, time.time()))

    def _get(self, _req: Recorded, m: re.Match[str]) -> Response:
        with self.lock:
            pred = self._preds.get(m["id"])
            if pred is None:
                return self.problem(404, "The requested resource could not be found.", "Not found")
            return json_response(200, self._json(pred, time.time()))

    def _cancel(self, _req: Recorded, m: re.Match[str]) -> Response:
        with self._changed:
            pred = self._preds.get(m["id"])
            if pred is None:
                return self.problem(404, "The requested resource could not be found.", "Not found")
            self._cancels.append(pred.id)
            now = time.time()
            if not self._done(pred, now):
                pred.canceled_at = now
                if pred.timer is not None:
                    pred.timer.cancel()
                self._changed.notify_all()
                self._schedule_webhook(pred, immediately=True)
            return json_response(200, self._json(pred, now))

    def _version(self, _req: Recorded, m: re.Match[str]) -> Response:
        with self.lock:
            spec = self.models.get(m["version"])
        if spec is None or spec.ref != f"{m['owner']}/{m['name']}":
            return self.problem(404, "The requested resource could not be found.", "Not found")
        return json_response(200, spec.version_json())

    def _model(self, _req: Recorded, m: re.Match[str]) -> Response:
        spec = self._latest(f"{m['owner']}/{m['name']}")
        if spec is None:
            return self.problem(404, "The requested resource could not be found.", "Not found")
        return json_response(
            200,
            {
                "url": f"https://replicate.com/{spec.ref}",
                "owner": spec.owner,
                "name": spec.name,
                "description": None,
                "visibility": "public",
                "github_url": None,
                "paper_url": None,
                "license_url": None,
                "run_count": 0,
                "cover_image_url": None,
                "default_example": None,
                "latest_version": spec.version_json(),
            },
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _invalid(self, fields: list[dict[str, str]]) -> Response:
        detail = "".join(f"- {f['field']}: {f['description']}\n" for f in fields)
        return self.problem(422, detail, "Input validation failed", invalid_fields=fields)

    def _current_plan(self) -> Plan:
        return Plan(
            outcome=self.outcome,
            duration=self.duration,
            output=self.output,
            error=self.error,
            start_delay=self.start_delay,
        )

    def _resolve(self, version: str) -> ModelSpec | None:
        # Upstream accepts a bare version id, "owner/name:version" or "owner/name".
        with self.lock:
            if ":" in version:
                ref, _, vid = version.partition(":")
                spec = self.models.get(vid)
                return spec if spec is not None and spec.ref == ref else None
            if "/" in version:
                return self._latest(version)
            return self.models.get(version)

    def _latest(self, ref: str) -> ModelSpec | None:
        with self.lock:
            found = [s for s in self.models.values() if s.ref == ref]
        return found[-1] if found else None

    @staticmethod
    def _prefer_wait(value: str | None) -> float | None:
        if not value:
            return None
        m = _PREFER_WAIT.search(value)
        if m is None:
            return None
        return float(m.group(1)) if m.group(1) else 60.0

    def _new_id(self) -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(self._rng.choice(alphabet) for _ in range(26))

    def _status(self, pred: _Prediction, now: float) -> str:
        if pred.canceled_at is not None:
            return "canceled"
        elapsed = now - pred.created
        if elapsed < pred.plan.starting_for:
            return "starting"
        if pred.plan.outcome == "never" or elapsed < pred.plan.duration:
            return "processing"
        return {"empty": "succeeded"}.get(pred.plan.outcome, pred.plan.outcome)

    def _done(self, pred: _Prediction, now: float) -> bool:
        return self._status(pred, now) in TERMINAL

    def _json(self, pred: _Prediction, now: float, force_status: str | None = None) -> dict[str, Any]:
        status = force_status or self._status(pred, now)
        plan = pred.plan
        started = pred.created + plan.starting_for
        if pred.canceled_at is not None:
            completed: float | None = pred.canceled_at
        elif status in TERMINAL:
            completed = pred.created + plan.duration
        else:
            completed = None
        output: Any = None
        error = None
        logs = ""
        if status != "starting":
            logs = "Loading CLIP model...\nInterrogating image...\n"
        if status == "succeeded":
            configured = pred.spec.default_output if plan.output is None else plan.output
            output = "" if plan.outcome == "empty" else configured
            logs += "Done.\n"
        elif status == "failed":
            error = plan.error
            logs += f"Error: {plan.error}\n"
        metrics: dict[str, Any] = {}
        if completed is not None:
            metrics = {
                "predict_time": round(max(0.0, completed - started), 6),
                "total_time": round(completed - pred.created, 6),
            }
        # Upstream deletes inputs and outputs an hour after the end (its file URLs stop working too).
        removed = completed is not None and force_status is None and now >= completed + self.retention
        if removed:
            output, logs = None, ""
        base = f"{self.url}/v1/predictions/{pred.id}"
        body: dict[str, Any] = {
            "id": pred.id,
            "model": pred.spec.ref,
            "version": pred.spec.version,
            "input": {} if removed else pred.input,
            "logs": logs,
            "output": output,
            "data_removed": removed,
            "error": error,
            "status": status,
            "source": "api",
            "created_at": iso(pred.created),
            "started_at": iso(started) if status != "starting" and now >= started else None,
            "completed_at": iso(completed) if completed is not None and force_status is None else None,
            "metrics": metrics if force_status is None else {},
            "urls": {
                "get": base,
                "cancel": f"{base}/cancel",
                "web": f"https://replicate.com/p/{pred.id}",
            },
        }
        if pred.webhook is not None:
            body["webhook"] = pred.webhook
            body["webhook_events_filter"] = pred.events_filter or ["start", "output", "logs", "completed"]
        return body

    # -- webhooks --------------------------------------------------------------------------------

    def _schedule_webhook(self, pred: _Prediction, immediately: bool = False) -> None:
        if not (self.deliver_webhooks and pred.webhook) or pred.webhook_sent:
            return
        if pred.events_filter is not None and "completed" not in pred.events_filter:
            return
        if not immediately and pred.plan.outcome == "never":
            return
        delay = 0.0 if immediately else max(0.0, pred.plan.duration - (time.time() - pred.created))
        if pred.timer is not None:
            pred.timer.cancel()
        pred.timer = threading.Timer(delay, self._deliver_webhook, args=(pred,))
        pred.timer.daemon = True
        pred.timer.start()

    def _deliver_webhook(self, pred: _Prediction) -> None:
        with self.lock:
            if pred.webhook_sent or pred.webhook is None:
                return
            pred.webhook_sent = True
            body = self._json(pred, time.time())
            secret = self.webhook_secret
        url = pred.webhook
        # Only ever talk to this machine: a fake must not reach out anywhere.
        if urlsplit(url).hostname not in ("127.0.0.1", "localhost"):
            self._record_webhook(url, body, None, "not a local URL; not delivered")
            return
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **_sign(secret, f"msg_{pred.id}", raw)}
        request = urllib.request.Request(url, data=raw, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                self._record_webhook(url, body, resp.status, None)
        except urllib.error.HTTPError as exc:
            self._record_webhook(url, body, exc.code, None)
        except OSError as exc:
            self._record_webhook(url, body, None, type(exc).__name__)

    def _record_webhook(self, url: str, body: dict[str, Any], status: int | None, error: str | None) -> None:
        with self.lock:
            self._webhooks.append(WebhookDelivery(url, body, status, error, time.time()))


def _sign(secret: str | None, msg_id: str, raw: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp}
    if secret:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
        headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
    return headers
