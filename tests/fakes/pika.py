"""A fake of the pikapikapika.io Pika API: ``POST {base}/generate`` and ``GET {base}/jobs/{id}``.

A job's video is ``queued``, then ``pending`` with creeping progress, and ``duration`` seconds after
submission reaches its planned outcome. Status is derived from the clock on every read.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

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
    route,
)

Outcome = Literal["finished", "failed", "error", "never"]
OUTCOMES: tuple[str, ...] = ("finished", "failed", "error", "never")
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "5:2", "4:5", "4:3")
CAMERA_VALUES = {
    "zoom": ("in", "out"),
    "pan": ("left", "right"),
    "tilt": ("up", "down"),
    "rotate": ("cw", "ccw"),
}
DEFAULT_RESULT_URL = "https://cdn.pika.art/v1/{uuid}/Plane_fly_seed3183047765.mp4"

# Where each option belongs; a key found one level too high is a client bug worth a 400.
_OPTION_KEYS = ("frameRate", "aspectRatio", "camera", "parameters")
_PARAMETER_KEYS = ("motion", "guidanceScale", "negativePrompt", "seed")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(
    problems: list[str],
    where: str,
    value: Any,
    low: float,
    high: float,
) -> None:
    if value is None:
        problems.append(f"{where} is required")
        return
    if not _is_number(value):
        problems.append(f"{where} must be a number, got {type(value).__name__}")
    elif not low <= value <= high:
        problems.append(f"{where} must be between {low:g} and {high:g}, got {value!r}")


def generation_problems(body: Any) -> list[str]:
    """Everything wrong with a ``/generate`` body per the documented contract (empty: valid).

    Unknown extra keys are tolerated; documented keys at the wrong level are not.
    """
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems: list[str] = []
    for key in ("promptText", "model", "image"):
        if key not in body:
            problems.append(f"{key} is required")
        elif not isinstance(body[key], str):
            problems.append(f"{key} must be a string, got {type(body[key]).__name__}")
    if isinstance(body.get("model"), str) and not body["model"].strip():
        problems.append("model must not be empty")
    image = body.get("image")
    if isinstance(image, str) and not re.match(r"^https?://[^\s/]+", image):
        problems.append("image must be an http(s) URL")
    for key in (*_OPTION_KEYS, *_PARAMETER_KEYS):
        if key in body:
            where = "options" if key in _OPTION_KEYS else "options.parameters"
            problems.append(f"{key} belongs in {where}, not at the top level")

    options = body.get("options")
    if not isinstance(options, dict):
        problems.append("options is required and must be an object")
        return problems
    _check_range(problems, "options.frameRate", options.get("frameRate"), 1, 24)
    for key in _PARAMETER_KEYS:
        if key in options:
            problems.append(f"{key} belongs in options.parameters, not in options")
    if "aspectRatio" in options and options["aspectRatio"] not in ASPECT_RATIOS:
        problems.append(f"options.aspectRatio must be one of {', '.join(ASPECT_RATIOS)}")
    if "camera" in options:
        camera = options["camera"]
        if not isinstance(camera, dict):
            problems.append("options.camera must be an object")
        else:
            for key, value in camera.items():
                allowed = CAMERA_VALUES.get(key)
                if allowed is None:
                    problems.append(f"options.camera.{key} is not a camera setting")
                elif value not in allowed:
                    problems.append(f"options.camera.{key} must be one of {', '.join(allowed)}")

    params = options.get("parameters")
    if not isinstance(params, dict):
        problems.append("options.parameters is required and must be an object")
        return problems
    _check_range(problems, "options.parameters.motion", params.get("motion"), 1, 4)
    _check_range(problems, "options.parameters.guidanceScale", params.get("guidanceScale"), 5, 25)
    if "negativePrompt" in params and not isinstance(params["negativePrompt"], str):
        problems.append("options.parameters.negativePrompt must be a string")
    if "seed" in params and not _is_number(params["seed"]):
        problems.append("options.parameters.seed must be a number")
    return problems


@dataclass
class Plan:
    """How one job will unfold."""

    outcome: str = "finished"
    duration: float = 0.2
    result_url: str = DEFAULT_RESULT_URL
    queued_for: float | None = None  # None: a quarter of the duration

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @property
    def queued_seconds(self) -> float:
        """Seconds the video stays ``queued``."""
        return self.duration / 4 if self.queued_for is None else self.queued_for


@dataclass
class _Job:
    id: str
    video_id: str
    file_uuid: str
    body: dict[str, Any]
    created: float
    plan: Plan
    seed: int


class FakePika(FakeServer):
    """The pikapikapika.io API. Routes: ``generate`` and ``job``.

    Args:
        token: the bearer token the fake accepts.
        duration: seconds from submission to the outcome.
        outcome: ``finished``, ``failed``, ``error`` or ``never`` (stays ``pending``).
        result_url: template of a finished video's URL; ``{uuid}``, ``{job_id}`` and ``{video_id}``
            are filled in.
        prefix: path prefix of the API (the service's base URL is ``url + prefix``).
        job_id_key: where the generate reply puts the job id: ``"id"``, ``"pikaJobId"`` or ``"both"``.
    """

    def __init__(
        self,
        token: str = "pika_test",
        *,
        duration: float = 0.2,
        outcome: Outcome = "finished",
        result_url: str = DEFAULT_RESULT_URL,
        queued_for: float | None = None,
        prefix: str = "/web",
        job_id_key: Literal["id", "pikaJobId", "both"] = "id",
    ) -> None:
        self.token = token
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self._defaults = {
            "duration": duration,
            "outcome": outcome,
            "result_url": result_url,
            "queued_for": queued_for,
            "job_id_key": job_id_key,
        }
        super().__init__()
        self.reset_state()

    @property
    def base_url(self) -> str:
        """What the service's Pika base URL setting should be."""
        return self.url + self.prefix

    # -- configuration and state -----------------------------------------------------------------

    def reset_state(self) -> None:
        """Forget jobs and queued plans; restore constructor configuration."""
        with self.lock:
            self.duration: float = self._defaults["duration"]
            self.outcome: str = self._defaults["outcome"]
            self.result_url: str = self._defaults["result_url"]
            self.queued_for: float | None = self._defaults["queued_for"]
            self.job_id_key: str = self._defaults["job_id_key"]
            self._jobs: dict[str, _Job] = {}
            self._plans: deque[Plan] = deque()
            self._generates: list[dict[str, Any]] = []
            self._rejected: list[tuple[Any, list[str]]] = []
            self._polls: dict[str, int] = {}
            self._rng = random.Random(0)

    def queue_plan(
        self,
        outcome: Outcome | None = None,
        *,
        duration: float | None = None,
        result_url: str | None = None,
        queued_for: float | None = None,
    ) -> None:
        """Plan the next accepted generate (FIFO); unset fields take the current configuration."""
        with self.lock:
            self._plans.append(
                Plan(
                    outcome=outcome or self.outcome,
                    duration=self.duration if duration is None else duration,
                    result_url=result_url or self.result_url,
                    queued_for=self.queued_for if queued_for is None else queued_for,
                )
            )

    def finish_now(self, job_id: str, outcome: Outcome = "finished") -> None:
        """Make a job reach ``outcome`` at once."""
        with self.lock:
            job = self._jobs[job_id]
            job.plan = Plan(outcome=outcome, duration=0.0, result_url=job.plan.result_url, queued_for=0.0)
            job.created = time.time()

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job, as its current ``GET /jobs/{id}`` answer, by id."""
        with self.lock:
            now = time.time()
            return {jid: self._job_json(job, now) for jid, job in self._jobs.items()}

    @property
    def generates(self) -> list[dict[str, Any]]:
        """Bodies of accepted generate calls, in order."""
        with self.lock:
            return list(self._generates)

    @property
    def rejected_generates(self) -> list[tuple[Any, list[str]]]:
        """Bodies of generate calls answered 400, with the problems found."""
        with self.lock:
            return list(self._rejected)

    @property
    def polls(self) -> dict[str, int]:
        """How many times each known job was read."""
        with self.lock:
            return dict(self._polls)

    # -- provider style --------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The two endpoints the service uses."""
        p = re.escape(self.prefix)
        return [
            route("generate", "POST", rf"{p}/generate", self._generate),
            route("job", "GET", rf"{p}/jobs/(?P<id>[^/]+)", self._job),
        ]

    def authorized(self, req: Recorded) -> bool:
        """``Authorization: Bearer <token>``."""
        return bearer_token(req) == self.token

    def unauthorized_response(self, req: Recorded) -> Response:
        """A plain JSON 401."""
        return json_response(401, {"error": "Unauthorized", "message": "Invalid or missing bearer token"})

    def error_response(self, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
        """Plain JSON errors (the body is undocumented upstream)."""
        return json_response(status, {"error": detail}, headers)

    def malformed_response(self, route_name: str | None, fault: Fault) -> Response:
        """``wrong_shape``: no ``job`` on generate, no ``videos`` on a job read."""
        if fault.malformed == "wrong_shape" and fault.body is None:
            if route_name == "generate":
                return json_response(200, {"success": True, "data": {"message": "queued"}})
            return json_response(200, {"job": {"status": "finished"}})
        return super().malformed_response(route_name, fault)

    # -- handlers --------------------------------------------------------------------------------

    def _generate(self, req: Recorded, _m: re.Match[str]) -> Response:
        body = req.json
        if not is_json_content_type(req):
            problems = [f"Content-Type must be application/json, got {req.headers.get('content-type') or 'none'}"]
        elif body is None and req.body:
            problems = ["body is not valid JSON"]
        else:
            problems = generation_problems(body)
        if problems:
            with self.lock:
                self._rejected.append((body, problems))
            error = {"error": "Bad Request", "message": "; ".join(problems), "details": problems}
            return json_response(400, error)
        with self.lock:
            plan = self._plans.popleft() if self._plans else self._current_plan()
            job = _Job(
                id=self._uuid(),
                video_id=self._uuid(),
                file_uuid=self._uuid(),
                body=body,
                created=time.time(),
                plan=plan,
                seed=self._rng.randrange(2**32),
            )
            self._jobs[job.id] = job
            self._polls[job.id] = 0
            self._generates.append(body)
            reply = self._job_json(job, job.created)["job"]
        if self.job_id_key == "pikaJobId":
            reply["pikaJobId"] = reply.pop("id")
        elif self.job_id_key == "both":
            reply["pikaJobId"] = reply["id"]
        return json_response(200, {"job": reply})

    def _job(self, _req: Recorded, m: re.Match[str]) -> Response:
        with self.lock:
            job = self._jobs.get(m["id"])
            if job is None:
                return json_response(404, {"error": "Job not found"})
            self._polls[job.id] += 1
            return json_response(200, self._job_json(job, time.time()))

    # -- helpers ---------------------------------------------------------------------------------

    def _current_plan(self) -> Plan:
        return Plan(
            outcome=self.outcome,
            duration=self.duration,
            result_url=self.result_url,
            queued_for=self.queued_for,
        )

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _state(self, job: _Job, now: float) -> tuple[str, int]:
        elapsed = now - job.created
        plan = job.plan
        if elapsed < plan.queued_seconds and elapsed < plan.duration:
            return "queued", 0
        if plan.outcome == "never":
            # Creeps towards 99 and never gets there.
            return "pending", min(99, int(99 * (1 - 0.5 ** (elapsed / max(plan.duration, 0.001)))))
        if elapsed < plan.duration:
            return "pending", min(99, int(100 * elapsed / plan.duration))
        if plan.outcome == "finished":
            return "finished", 100
        return plan.outcome, 0

    def _job_json(self, job: _Job, now: float) -> dict[str, Any]:
        status, progress = self._state(job, now)
        finished = status == "finished"
        result_url = job.plan.result_url.format(uuid=job.file_uuid, job_id=job.id, video_id=job.video_id)
        poster = f"https://cdn.pika.art/v1/{job.file_uuid}/poster.jpg"
        return {
            "job": {
                "id": job.id,
                "status": status,
                "promptText": job.body.get("promptText"),
                "params": {"model": job.body.get("model"), "options": job.body.get("options")},
                "createdAt": iso(job.created),
                "updatedAt": iso(now),
            },
            "videos": [
                {
                    "id": job.video_id,
                    "status": status,
                    "seed": job.seed,
                    "resultUrl": result_url if finished else None,
                    "progress": progress,
                    "imageThumb": job.body.get("image"),
                    "videoPoster": poster if finished else None,
                    "duration": 3,
                }
            ],
        }
