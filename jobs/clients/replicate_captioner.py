"""Replicate's CLIP Interrogator, through the official ``replicate`` client: image in, prompt out.

The prediction is created and read step by step (not with ``client.run``) so that its id can be
saved before any waiting starts: a restarted worker then waits on the same prediction.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import pydantic
import replicate
from replicate.exceptions import ReplicateError

from config import Settings
from jobs.clients.http import retry_after_seconds
from jobs.errors import CaptionFailed, TransientError

_RESETS_IN = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s")
DONE = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class PredictionState:
    """What one read of a prediction says."""

    status: str
    prompt: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """Whether the prediction reached a terminal status."""
        return self.status in DONE


class ReplicateCaptioner:
    """Creates CLIP Interrogator predictions and reads them back.

    ``REPLICATE_BASE_URL`` is honoured: passed on when set, and the client itself falls back to the
    variable and then to Replicate's public API.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = settings.replicate_model_id.partition(":")[2]
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
        )

    def _remember_retry_after(self, response: httpx.Response) -> None:
        self._last.retry_after = retry_after_seconds(response.headers.get("Retry-After"))

    def model_input(self, image_url: str) -> dict[str, Any]:
        """The model input for an image, with the CLIP options from the settings."""
        return {"image": image_url, "clip_model_name": self.settings.clip_model_name, "mode": self.settings.clip_mode}

    def create(self, image_url: str) -> str:
        """Create a prediction for an image and return its id.

        Raises:
            TransientError: throttled, server error or connection trouble.
            CaptionFailed: Replicate refused the prediction.
        """
        prediction = self._call(self.client.predictions.create, version=self.version, input=self.model_input(image_url))
        if not getattr(prediction, "id", None):
            raise TransientError("Replicate created a prediction without an id", kind="malformed")
        return prediction.id

    def get(self, prediction_id: str) -> PredictionState:
        """Read a prediction.

        Raises:
            TransientError: as for :meth:`create`, and for a malformed reply.
            CaptionFailed: the prediction is unknown to Replicate.
        """
        prediction = self._call(self.client.predictions.get, prediction_id)
        output = prediction.output
        if isinstance(output, list):
            output = "".join(str(part) for part in output)
        prompt = output.strip() if isinstance(output, str) else None
        return PredictionState(status=prediction.status, prompt=prompt or None, error=prediction.error)

    def cancel(self, prediction_id: str) -> None:
        """Ask Replicate to cancel a prediction (best effort, errors are the caller's to log)."""
        self._call(self.client.predictions.cancel, prediction_id)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
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
            raise CaptionFailed(f"Replicate refused ({status}): {detail}") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransientError(f"Replicate unreachable: {type(exc).__name__}", kind="connection", sent=False) from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"Replicate connection trouble: {type(exc).__name__}", kind="connection") from exc
        except (pydantic.ValidationError, ValueError, KeyError, TypeError) as exc:
            raise TransientError(f"Replicate reply malformed: {type(exc).__name__}", kind="malformed") from exc
