"""The requests of a worker process that are sleeping between steps, and the Redis work done for them in batches.

A threaded worker holds hundreds of requests that spend almost all their time asleep: in the
initial wait, between polls, in a back-off. On the machines measured, every time a thread wakes
costs some 50 µs of CPU before it does anything, and a Redis round trip several times that (the
numbers are in ``bench/``). So a sleeping request does no Redis work of its own: one thread per
process reads the cancel flags of all of them in one round trip every :data:`CANCEL_CHECK_INTERVAL`
and wakes the canceled ones, and writes their provider progress in one round trip a second. A
request's thread then wakes only when its sleep ends, it was canceled, or the worker is stopping.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from jobs import shutdown
from jobs.errors import RequestCanceled
from jobs.store import RequestStore

log = logging.getLogger(__name__)

#: How stale a cancel may be while a request sleeps: at most this, and at most three polls.
#: A cancel needs no haste here (the record and the FAILED callback are handled at once by the web
#: process; this only frees the worker and stops the provider). Every step also reads the flag
#: itself before it starts, and a SIGTERM wakes a sleeping request at once.
CANCEL_CHECK_INTERVAL = 30.0
#: How long a provider's progress may wait before it is written to the record.
PROGRESS_WRITE_INTERVAL = 1.0


@dataclass(eq=False)
class Seat:
    """One sleeping request: its record key, and what wakes its thread."""

    key: str
    wake: threading.Event = field(default_factory=threading.Event)
    canceled: bool = False


class WaitingRoom:
    """Where the requests of a process sleep; one thread reads their cancels and writes their progress.

    The thread runs while some request sleeps or some progress is unwritten, and ends at its next
    turn after that, so a process (or a test) that runs no request has none. It wakes only when
    there is work: a cancel read, or a progress write (at most one a second).

    Args:
        store: the record store (its batched reads and writes).
        cancel_interval: seconds between two reads of the sleeping requests' cancel flags.
    """

    def __init__(self, store: RequestStore, cancel_interval: float = CANCEL_CHECK_INTERVAL) -> None:
        self.store = store
        self.cancel_interval = cancel_interval
        self._lock = threading.Lock()
        self._seats: dict[Seat, None] = {}  # insertion-ordered set; one request may sleep in two threads
        self._progress: dict[str, int] = {}
        self._thread: threading.Thread | None = None  # the batch thread, while it runs
        self._last_write = 0.0  # kept here, not in the thread: a thread that ended and a new one share it
        # Wakes the batch thread early: progress came in, so a write is due within the second.
        self._kick = threading.Event()
        shutdown.REQUESTED.wake_on_stop(self)

    def sleep(self, key: str, seconds: float) -> None:
        """Sleep up to ``seconds`` (never past the thread's job deadline) for the request at ``key``.

        Raises:
            RequestCanceled: the caller canceled the request while it slept.
            WorkerStopping: the worker got SIGTERM (it wakes the sleep at once).
            JobTimeoutException: the job's time limit passed.
        """
        seat = Seat(key)
        with self._lock:
            self._seats[seat] = None
            self._start_thread()
        try:
            # After the seat is taken: a SIGTERM from now on either is seen here or wakes the seat.
            shutdown.check()
            left = shutdown.time_left()
            seat.wake.wait(max(0.0, seconds if left is None else min(seconds, left)))
        finally:
            with self._lock:
                self._seats.pop(seat, None)
        shutdown.check()
        if seat.canceled:
            raise RequestCanceled("canceled by the caller")

    def note_progress(self, key: str, progress: int) -> None:
        """Have ``progress`` written to the request's record within :data:`PROGRESS_WRITE_INTERVAL`."""
        with self._lock:
            first = not self._progress
            self._progress[key] = progress
            self._start_thread()
        if first:
            self._kick.set()

    def _start_thread(self) -> None:
        # Called with the lock held.
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="waiting-room", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """The batch thread: progress writes at most once a second, cancel reads every ``cancel_interval``.

        It sleeps until the next cancel read unless progress is waiting to be written: a process
        with one request (WORKER_THREADS=1) wakes for its request's polls, not every second.
        A stop needs nothing from it (see :meth:`wake_all`).
        """
        next_read = time.monotonic() + self.cancel_interval
        while True:
            with self._lock:
                if not self._seats and not self._progress:
                    self._thread = None
                    return
                pending = bool(self._progress)
            now = time.monotonic()
            timeout = next_read - now
            if pending:
                timeout = min(timeout, self._last_write + PROGRESS_WRITE_INTERVAL - now)
            if self._kick.wait(max(0.0, timeout)):
                self._kick.clear()
                continue  # progress came in: work out when it may be written
            try:
                if time.monotonic() >= self._last_write + PROGRESS_WRITE_INTERVAL:
                    self._write_progress()
                if time.monotonic() >= next_read:
                    next_read = time.monotonic() + self.cancel_interval
                    self._read_cancels()
            except RedisError as exc:  # tried again at the next turn; this thread must not end
                log.warning("batched record work failed: %s", type(exc).__name__)

    def wake_all(self) -> None:
        """End every sleep now: the worker is stopping (called by :data:`jobs.shutdown.REQUESTED`)."""
        with self._lock:
            seats = list(self._seats)
        for seat in seats:
            seat.wake.set()

    def _write_progress(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, {}
        if not progress:
            return
        self._last_write = time.monotonic()  # only a write counts: a quiet room writes the next at once
        try:
            self.store.write_progress(progress)
        except RedisError:
            with self._lock:  # kept for the next turn, unless a newer value came meanwhile
                self._progress = {**progress, **self._progress}
            raise

    def _read_cancels(self) -> None:
        with self._lock:
            seats = list(self._seats)
        if not seats:
            return
        canceled = self.store.canceled(list(dict.fromkeys(seat.key for seat in seats)))
        for seat in seats:
            if seat.key in canceled:
                seat.canceled = True
                seat.wake.set()
