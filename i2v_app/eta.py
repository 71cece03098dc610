"""Time-to-callback estimates: place in the queue, worker processes and their threads, timing settings."""

from __future__ import annotations

import math
import time

from config import Settings
from jobs.states import Status
from jobs.store import Record

#: What a CLIP Interrogator caption usually takes in ``best`` mode.
TYPICAL_CAPTION_SECONDS = 20.0


#: What the offline backends take for one request (describe, render a few seconds of video).
TYPICAL_LOCAL_SECONDS = 5.0
#: What an image-to-video model on Replicate usually takes.
TYPICAL_REPLICATE_VIDEO_SECONDS = 90.0


def caption_seconds(settings: Settings) -> float:
    """What captioning usually takes with the configured backend."""
    return 1.0 if settings.caption_backend == "local" else TYPICAL_CAPTION_SECONDS


def first_poll_after(settings: Settings) -> float:
    """When the configured video backend first looks at a submission (as the pipeline does)."""
    return {"pika": settings.initial_wait_time, "replicate": settings.poll_interval}.get(settings.video_backend, 0.0)


def typical_run(settings: Settings) -> float:
    """Seconds one request usually holds a worker with the configured backends."""
    if settings.video_backend == "local":
        return caption_seconds(settings) + TYPICAL_LOCAL_SECONDS
    if settings.video_backend == "replicate":
        return caption_seconds(settings) + TYPICAL_REPLICATE_VIDEO_SECONDS
    return caption_seconds(settings) + settings.initial_wait_time + settings.poll_interval


def latest_run(settings: Settings) -> float:
    """Seconds one request holds a worker at most before giving up on the video."""
    return caption_seconds(settings) + settings.generation_deadline


def estimate(settings: Settings, record: Record, ahead: int, workers: int) -> tuple[int, int] | None:
    """Expected and latest seconds until the callback; None once the request has finished.

    Args:
        settings: the timing settings.
        record: the request.
        ahead: requests in the queue before this one (for a queued request).
        workers: worker processes serving the queue (at least one is assumed); each runs
            ``WORKER_THREADS`` requests at once (the web reads the same setting as the workers).
    """
    if record.terminal:
        return None
    now = time.time()
    if record.status == Status.QUEUED:
        # Each thread of each worker takes one request at a time: the queue drains in waves of
        # processes x threads.
        wait = (ahead // (max(workers, 1) * settings.worker_threads)) * typical_run(settings)
        return math.ceil(wait + typical_run(settings)), math.ceil(wait + latest_run(settings))
    if record.submitted_at:
        first_poll = record.submitted_at + first_poll_after(settings)
        expected = max(first_poll - now, 0.0) + settings.poll_interval
        latest = record.submitted_at + settings.generation_deadline - now
    else:
        elapsed = now - (record.caption_started_at or now)
        expected = typical_run(settings) - elapsed
        latest = latest_run(settings) - elapsed
    expected = max(expected, settings.poll_interval)
    return math.ceil(expected), math.ceil(max(latest, expected))


def eta_text(expected: int, latest: int) -> str:
    """The submit reply's message for an estimate."""
    low = max(1, math.ceil(expected / 60))
    high = max(low + 1, math.ceil(latest / 60))
    return f"Video generation pipeline initialized | ETA: {low}-{high} minutes"
