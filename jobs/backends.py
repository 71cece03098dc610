"""What the pipeline asks of a caption backend and a video backend, and their timings for the ETA.

The pipeline and the ETA know backends only through this module: :class:`Captioner` and
:class:`VideoBackend` are what every implementation (``jobs.clients.local_backends``,
``jobs.clients.replicate``, ``jobs.clients.pika``) provides, and the timings are declared here by
backend name so that the web process estimates with the numbers the worker uses without loading
any provider client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from config import Settings

#: The statuses after which a prediction changes no more.
PREDICTION_DONE = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class PredictionState:
    """What one read of a caption prediction says."""

    status: str
    prompt: str | None = None
    error: str | None = None
    output: Any = None

    @property
    def done(self) -> bool:
        """Whether the prediction reached a terminal status."""
        return self.status in PREDICTION_DONE


@dataclass(frozen=True)
class VideoState:
    """What one poll of a video job says."""

    status: str
    url: str | None = None
    progress: int | None = None
    #: A title chosen by the backend; None means "derive it from the URL" (Pika's file names).
    title: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the video is ready at ``url``."""
        return self.status == "finished" and bool(self.url)


@runtime_checkable
class Captioner(Protocol):
    """Image in, prompt out: either at once (:meth:`describe`) or as a prediction to create and read.

    A prediction's id is saved before it is waited on, so a job that runs again reads the same one.
    Errors are the failure taxonomy's: ``TransientError`` (try again) or ``CaptionFailed``.
    """

    #: The ``CAPTION_BACKEND`` value; the provider in metrics.
    name: str
    #: How messages name the provider ("Replicate").
    label: str

    def describe(self, image_url: str) -> str | None:
        """The prompt made at once, or None when the backend captions through a prediction."""
        ...

    def create(self, image_url: str) -> str:
        """Start a caption prediction for the image and return its id."""
        ...

    def get(self, prediction_id: str) -> PredictionState:
        """Read a caption prediction."""
        ...

    def cancel(self, prediction_id: str) -> None:
        """Stop a prediction nobody will read (best effort)."""
        ...


@runtime_checkable
class VideoBackend(Protocol):
    """Image and prompt in, a video URL out: submitted once, then polled until finished.

    The job id is saved the moment :meth:`submit` returns, so a job that runs again polls the same
    video. Errors are the failure taxonomy's: ``TransientError``, ``GenerationFailed`` or
    ``GenerationUnknown`` (sent, answer lost: never submitted again).
    """

    #: The ``VIDEO_BACKEND`` value; the provider in the record, logs and metrics.
    name: str
    #: How messages name the provider ("Pika").
    label: str

    def first_poll_after(self) -> float:
        """Seconds after the submission that the first poll is worth making."""
        ...

    def max_concurrency(self) -> int:
        """How many requests may be in flight at the provider at once, across workers; 0 for no cap."""
        ...

    def submit(self, image_url: str, prompt: str, media_name: str) -> str:
        """Start a video of the image with the prompt and return the job id to poll."""
        ...

    def poll(self, job_id: str, media_name: str, prompt: str | None) -> VideoState:
        """Read the job; a finished state carries the URL the callback sends."""
        ...

    def cancel(self, job_id: str) -> None:
        """Stop a video nobody will watch, where the provider can be told (best effort)."""
        ...


@dataclass(frozen=True)
class VideoTiming:
    """When a video backend first looks at a submission, and what one video usually takes there."""

    first_poll_after: Callable[[Settings], float]
    typical_seconds: Callable[[Settings], float]


#: Video timings by ``VIDEO_BACKEND``: the pipeline's first poll and the ETA both read these.
VIDEO_TIMINGS: dict[str, VideoTiming] = {
    # Pika videos take minutes: look first after INITIAL_WAIT_TIME, usually ready one poll later.
    "pika": VideoTiming(
        first_poll_after=lambda s: s.initial_wait_time,
        typical_seconds=lambda s: s.initial_wait_time + s.poll_interval,
    ),
    # Replicate's image-to-video models take a minute or two: polled from the start.
    "replicate": VideoTiming(first_poll_after=lambda s: s.poll_interval, typical_seconds=lambda s: 90.0),
    # The offline render is stored by the time the submission returns: look at once.
    "local": VideoTiming(first_poll_after=lambda s: 0.0, typical_seconds=lambda s: 5.0),
}

#: What one caption usually takes, by ``CAPTION_BACKEND`` (the CLIP Interrogator in ``best`` mode).
CAPTION_SECONDS: dict[str, float] = {"replicate": 20.0, "local": 1.0}


def video_timing(settings: Settings) -> VideoTiming:
    """The timing of the configured video backend."""
    return VIDEO_TIMINGS[settings.video_backend]


def caption_seconds(settings: Settings) -> float:
    """What one caption usually takes with the configured caption backend."""
    return CAPTION_SECONDS[settings.caption_backend]
