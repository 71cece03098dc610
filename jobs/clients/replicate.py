"""Replicate, through the official ``replicate`` client: CLIP Interrogator captions and, as a
second video backend, an image-to-video model.

Predictions are created and read step by step (not with ``client.run``) so that their ids can
be saved before any waiting starts: a restarted worker then waits on the same prediction.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pydantic
import replicate
from httpx._utils import get_environment_proxies
from replicate.client import RetryTransport
from replicate.exceptions import ReplicateError

from config import Settings
from jobs.backends import VIDEO_TIMINGS, PredictionState, VideoState
from jobs.clients.http import retry_after_seconds
from jobs.errors import CaptionFailed, GenerationFailed, PipelineError, TransientError
from jobs.titles import title_from_prompt

_RESETS_IN = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s")
#: How known image-to-video models name their inputs: (image field, prompt field, fixed extras).
VIDEO_INPUTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "wan-video/wan-2.2-i2v-fast": ("image", "prompt", {}),
    "kwaivgi/kling-v1.6-standard": ("start_image", "prompt", {"duration": 5}),
    "minimax/video-01": ("first_frame_image", "prompt", {}),
}


def environment_proxy_mounts() -> dict[str, httpx.BaseTransport | None]:
    """Transports for HTTP(S)_PROXY / NO_PROXY from the environment.

    The replicate client hands httpx a transport of its own, and httpx then ignores the proxy
    variables; mounting proxy transports restores them (with the client's retries kept).
    """
    return {
        pattern: RetryTransport(wrapped_transport=httpx.HTTPTransport(proxy=url)) if url else None
        for pattern, url in get_environment_proxies().items()
    }


class ReplicateAPI:
    """The one client of Replicate's HTTP API, mapping its errors onto the failure taxonomy.

    ``REPLICATE_BASE_URL`` is honoured: passed on when set, and the client itself falls back to the
    variable and then to Replicate's public API.
    """

    def __init__(self, settings: Settings) -> None:
        timeout = httpx.Timeout(
            settings.http_read_timeout,
            connect=settings.http_connect_timeout,
            read=settings.http_read_timeout,
            write=settings.http_read_timeout,
            pool=settings.http_connect_timeout,
        )
        self._last = threading.local()
        self.client = replicate.Client(
            api_token=settings.replicate_api_token,
            base_url=settings.replicate_base_url or None,
            timeout=timeout,
            # The client's errors drop the response headers; keep Retry-After to honour it.
            event_hooks={"response": [self._remember_retry_after]},
            mounts=environment_proxy_mounts(),
        )

    def _remember_retry_after(self, response: httpx.Response) -> None:
        self._last.retry_after = retry_after_seconds(response.headers.get("Retry-After"))

    def create(self, refusal: type[PipelineError], **params: Any) -> str:
        """Create a prediction (``version=`` or ``model=``) and return its id."""
        prediction = self.call(self.client.predictions.create, refusal=refusal, **params)
        if not getattr(prediction, "id", None):
            raise TransientError("Replicate created a prediction without an id", kind="malformed")
        return prediction.id

    def get(self, prediction_id: str, refusal: type[PipelineError]) -> PredictionState:
        """Read a prediction."""
        prediction = self.call(self.client.predictions.get, prediction_id, refusal=refusal)
        output = prediction.output
        text = "".join(str(p) for p in output) if isinstance(output, list) else output
        prompt = text.strip() if isinstance(text, str) else None
        return PredictionState(status=prediction.status, prompt=prompt or None, error=prediction.error, output=output)

    def cancel(self, prediction_id: str) -> None:
        """Ask Replicate to cancel a prediction (best effort)."""
        self.call(self.client.predictions.cancel, prediction_id, refusal=CaptionFailed)

    def call(self, method: Any, *args: Any, refusal: type[PipelineError], **kwargs: Any) -> Any:
        """Call the client, turning its errors into :class:`TransientError` or ``refusal``."""
        self._last.retry_after = None
        try:
            return method(*args, **kwargs)
        except ReplicateError as exc:
            status = exc.status or 0
            detail = exc.detail or exc.title or "no detail"
            if status == 429:
                match = _RESETS_IN.search(detail)
                retry_after = self._last.retry_after
                if retry_after is None and match:
                    retry_after = float(match.group(1))
                raise TransientError(
                    f"Replicate throttled: {detail}", kind="throttled", retry_after=retry_after
                ) from exc
            if status >= 500 or status == 0:
                raise TransientError(
                    f"Replicate answered {status}: {detail}", kind="server_error", retry_after=self._last.retry_after
                ) from exc
            raise refusal(f"Replicate refused ({status}): {detail}") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransientError(f"Replicate unreachable: {type(exc).__name__}", kind="connection", sent=False) from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"Replicate connection trouble: {type(exc).__name__}", kind="connection") from exc
        except (pydantic.ValidationError, ValueError, KeyError, TypeError) as exc:
            raise TransientError(f"Replicate reply malformed: {type(exc).__name__}", kind="malformed") from exc


class ReplicateCaptioner:
    """The CLIP Interrogator (``CAPTION_BACKEND=replicate``): image in, prompt out."""

    name = "replicate"
    label = "Replicate"

    def __init__(self, settings: Settings, api: ReplicateAPI) -> None:
        self.settings = settings
        self.api = api
        self.version = settings.replicate_model_id.partition(":")[2]

    def model_input(self, image_url: str) -> dict[str, Any]:
        """The model input for an image, with the CLIP options from the settings."""
        return {"image": image_url, "clip_model_name": self.settings.clip_model_name, "mode": self.settings.clip_mode}

    def describe(self, image_url: str) -> str | None:
        """None: the CLIP Interrogator takes seconds to minutes, so it runs as a prediction."""
        return None

    def create(self, image_url: str) -> str:
        """Create a caption prediction and return its id."""
        return self.api.create(CaptionFailed, version=self.version, input=self.model_input(image_url))

    def get(self, prediction_id: str) -> PredictionState:
        """Read a caption prediction."""
        return self.api.get(prediction_id, CaptionFailed)

    def cancel(self, prediction_id: str) -> None:
        """Cancel a caption prediction."""
        self.api.cancel(prediction_id)


class ReplicateVideo:
    """An image-to-video model on Replicate (``VIDEO_BACKEND=replicate``, ``REPLICATE_VIDEO_MODEL``).

    Replicate deletes outputs after an hour, which is shorter than the callback retry window, so a
    finished video is copied into the media store and its URL is what the callback carries.
    """

    name = "replicate"
    label = "Replicate"

    def __init__(self, settings: Settings, api: ReplicateAPI, keep: Callable[[str, str], str]) -> None:
        self.settings = settings
        self.api = api
        self.keep = keep  # (output URL, media name) -> our URL
        model, _, version = settings.replicate_video_model.partition(":")
        self.target = {"version": version} if version else {"model": model}
        self.inputs = VIDEO_INPUTS.get(model, ("image", "prompt", {}))

    def first_poll_after(self) -> float:
        """Replicate's video models take a minute or two; poll from the start."""
        return VIDEO_TIMINGS[self.name].first_poll_after(self.settings)

    def max_concurrency(self) -> int:
        """No cap: ``PIKA_MAX_CONCURRENCY`` is Pika's, and Replicate queues predictions itself."""
        return 0

    def model_input(self, image_url: str, prompt: str) -> dict[str, Any]:
        """The model's input, by the model's own field names."""
        image_field, prompt_field, extras = self.inputs
        return {image_field: image_url, prompt_field: prompt, **extras}

    def submit(self, image_url: str, prompt: str, media_name: str) -> str:
        """Create the video prediction and return its id."""
        return self.api.create(GenerationFailed, input=self.model_input(image_url, prompt), **self.target)

    def poll(self, job_id: str, media_name: str = "", prompt: str | None = None) -> VideoState:
        """Read the prediction; once it succeeded, keep its video and return our URL."""
        state = self.api.get(job_id, GenerationFailed)
        if state.status == "succeeded":
            output = state.output[0] if isinstance(state.output, list) and state.output else state.output
            if not isinstance(output, str) or not output:
                raise GenerationFailed("the video model returned no video URL")
            url = self.keep(output, media_name)
            return VideoState(status="finished", url=url, progress=100, title=title_from_prompt(prompt or ""))
        if state.done:
            raise GenerationFailed(f"the video prediction {state.status}: {state.error or 'no error given'}")
        return VideoState(status=state.status)

    def cancel(self, job_id: str) -> None:
        """Cancel the video prediction."""
        self.api.cancel(job_id)
