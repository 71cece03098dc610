"""Time-to-callback estimates: place in the queue, worker processes and their threads, timing settings."""

from __future__ import annotations

import math
import time

from config import Settings
from jobs.backends import caption_seconds, video_timing
from jobs.states import Status
from jobs.store import Record


def typical_run(settings: Settings) -> float:
    """Seconds one request usually holds a worker with the configured backends."""
    return caption_seconds(settings) + video_timing(settings).typical_seconds(settings)


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
        # The backend's first look, as the pipeline makes it.
        first_poll = record.submitted_at + video_timing(settings).first_poll_after(settings)
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
