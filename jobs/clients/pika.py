"""Pika through the pikapikapika.io API: submit an image and a prompt, then read the job."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import requests

from config import Settings
from jobs.backends import VIDEO_TIMINGS, VideoState
from jobs.clients.http import PollError, PollPool, SessionPerCall, retry_after_seconds, was_sent
from jobs.errors import GenerationFailed, GenerationUnknown, TransientError

log = logging.getLogger(__name__)

#: Poll connections a worker process keeps open to Pika, shared by its threads (polls are short): a
#: thread that finds them all busy waits for one rather than paying a TLS handshake for a new one.
POLL_CONNECTIONS = 10
FAILED_STATES = frozenset({"failed", "error"})


class PikaClient:
    """Submits generations to Pika and reads their state (the ``pika`` video backend).

    Args:
        settings: base URL, token, generation options and timeouts.
        session: an HTTP session to reuse; by default a session per submission, since the
            threads of a worker submit at the same time and a requests session is not thread-safe.
    """

    def __init__(self, settings: Settings, session: requests.Session | SessionPerCall | None = None) -> None:
        self.base_url = settings.pikapi_base_url.rstrip("/")
        self.settings = settings
        self.timeout = (settings.http_connect_timeout, settings.http_read_timeout)
        self.session = session or SessionPerCall()
        self.session.headers["Authorization"] = f"Bearer {settings.pikapi_bearer_token}"
        # Polls are the one call made over and over while requests wait: a leaner transport (libcurl),
        # one pool for the whole process. The wait for one of its handles counts as connecting: with
        # all of them held by hung polls, a poll fails after HTTP_CONNECT_TIMEOUT as a transient
        # error and is tried again later.
        self.polls = PollPool(
            self.base_url,
            size=POLL_CONNECTIONS,
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            wait_timeout=settings.http_connect_timeout,
        )
        self.poll_headers = {"Authorization": f"Bearer {settings.pikapi_bearer_token}", "Accept": "application/json"}

    name = "pika"
    label = "Pika"

    def first_poll_after(self) -> float:
        """Pika videos take minutes: the first look comes after ``INITIAL_WAIT_TIME``."""
        return VIDEO_TIMINGS[self.name].first_poll_after(self.settings)

    def max_concurrency(self) -> int:
        """``PIKA_MAX_CONCURRENCY``: the requests a Pika account may have in flight at once."""
        return self.settings.pika_max_concurrency

    def cancel(self, job_id: str) -> None:
        """Nothing to do: the pikapikapika.io API has no way to stop a generation."""

    def generation_body(self, image_url: str, prompt: str) -> dict[str, Any]:
        """The ``/generate`` body for an image and prompt, with options from the settings."""
        s = self.settings
        parameters: dict[str, Any] = {"motion": s.pika_motion, "guidanceScale": s.pika_guidance_scale}
        if s.pika_negative_prompt:
            parameters["negativePrompt"] = s.pika_negative_prompt
        options: dict[str, Any] = {"frameRate": s.pika_frame_rate, "parameters": parameters}
        if s.pika_aspect_ratio:
            options["aspectRatio"] = s.pika_aspect_ratio
        return {"promptText": prompt, "model": s.pika_model, "image": image_url, "options": options}

    def submit(self, image_url: str, prompt: str, media_name: str = "") -> str:
        """Start a generation and return its Pika job id.

        Raises:
            TransientError: throttled (429), a server error (5xx), or not connected (never sent).
            GenerationFailed: any other refusal, or a reply without a job id.
            GenerationUnknown: the request was sent but no answer came back.
        """
        body = self.generation_body(image_url, prompt)
        try:
            resp = self.session.post(f"{self.base_url}/generate", json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            if was_sent(exc):
                raise GenerationUnknown(f"Pika submission sent but unanswered: {type(exc).__name__}") from exc
            raise TransientError(f"Pika unreachable: {type(exc).__name__}", kind="connection", sent=False) from exc
        self._raise_for_status(resp.status_code, resp.headers, "generate")
        job = _json(resp).get("job") if isinstance(_json(resp), dict) else None
        job_id = (job.get("id") or job.get("pikaJobId")) if isinstance(job, dict) else None
        if not isinstance(job_id, str | int) or not str(job_id):
            raise GenerationFailed("Pika accepted the submission but its reply has no job id")
        return str(job_id)

    def poll(self, job_id: str, media_name: str = "", prompt: str | None = None) -> VideoState:
        """Read the state of a generation.

        Raises:
            TransientError: throttled, server error, timeout or a malformed reply: poll again later.
            GenerationFailed: the job is unknown (404) or its video failed.
        """
        try:
            resp = self.polls.get(f"{self.base_url}/jobs/{job_id}", self.poll_headers)
        except PollError as exc:
            raise TransientError(f"Pika poll failed: {exc}", kind="connection") from exc
        if resp.status in (401, 403, 404):
            # Unknown job or refused access: polling on would only wait out the deadline.
            raise GenerationFailed(f"Pika answered {resp.status} for job {job_id}")
        if not 200 <= resp.status < 300:
            self._raise_for_status(resp.status, resp.headers, "jobs", refusal=TransientError)
        try:
            data = json.loads(resp.body)
        except (ValueError, RecursionError):
            data = None
        videos = data.get("videos") if isinstance(data, dict) else None
        if not isinstance(videos, list) or not videos or not isinstance(videos[0], dict):
            raise TransientError("Pika job reply has no videos", kind="malformed")
        video = videos[0]
        status = str(video.get("status") or "").lower()
        if status in FAILED_STATES:
            raise GenerationFailed(f"Pika reports the video {status}")
        url = video.get("resultUrl") if isinstance(video.get("resultUrl"), str) else None
        return VideoState(status=status, url=url, progress=_progress(video.get("progress")))

    @staticmethod
    def _raise_for_status(
        status: int, headers: Mapping[str, str], what: str, refusal: type[Exception] = GenerationFailed
    ) -> None:
        # Header names in lower case: a poll's are, and requests' headers match any case.
        if status == 429:
            raise TransientError(
                f"Pika {what} throttled (429)",
                kind="throttled",
                retry_after=retry_after_seconds(headers.get("retry-after")),
            )
        if status >= 500:
            raise TransientError(
                f"Pika {what} answered {status}",
                kind="server_error",
                retry_after=retry_after_seconds(headers.get("retry-after")),
            )
        if not 200 <= status < 300:
            message = f"Pika {what} answered {status}"
            if refusal is TransientError:
                raise TransientError(message, kind="server_error")
            raise refusal(message)


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _progress(value: Any) -> int | None:
    try:
        return max(0, min(100, int(float(value))))
    except (TypeError, ValueError):
        return None
