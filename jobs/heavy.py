"""A per-process cap on memory-heavy steps (image downloads, video copies, local encodes) in a threaded worker.

A worker process runs ``WORKER_THREADS`` requests at once. Nearly all of them wait and cost
kilobytes, but a few steps hold megabytes while they run: an image decoded in memory (up to
``IMAGE_MAX_BYTES`` compressed and far more decoded), the frames of a local video and its encoder,
a provider's video copied into the media store. ``WORKER_HEAVY_STEPS`` of them run at once per
process; the others wait their turn, so the process's memory peak stays what the dyno holds.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from jobs import shutdown

#: Seconds between two looks at the stop flag while a thread waits for its turn.
WAKE_INTERVAL = 0.5


class HeavySteps:
    """At most ``limit`` heavy steps at once in this process.

    Args:
        limit: how many may run at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Run the block once a slot is free; while waiting, a SIGTERM or the job's deadline still stops it.

        Raises:
            WorkerStopping: the worker is stopping (see ``jobs.shutdown.check``).
            JobTimeoutException: the job's time limit passed while it waited.
        """
        while not self._slots.acquire(timeout=WAKE_INTERVAL):
            shutdown.check()
        try:
            yield
        finally:
            self._slots.release()
