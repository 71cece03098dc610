"""The worker's "stop now" flag (SIGTERM) and each job thread's deadline, checked by the pipeline between steps."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from rq.timeouts import JobTimeoutException


class Wakeable(Protocol):
    """Something that holds waits of its own which a stop must end (see :meth:`StopFlag.wake_on_stop`)."""

    def wake_all(self) -> None:
        """End every wait it holds now."""


class StopFlag(threading.Event):
    """An event that, when set, also ends the waits of whatever asked to be woken.

    Sleeping requests wait on events of their own (one wait per thread is cheaper than all of them
    waiting on this one), so setting the flag has to wake them: the waiting rooms register here,
    and a room needs no thread of its own watching the flag.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wakeables: weakref.WeakSet[Wakeable] = weakref.WeakSet()

    def wake_on_stop(self, wakeable: Wakeable) -> None:
        """Call ``wakeable.wake_all()`` whenever the flag is set (held weakly: no leak)."""
        self._wakeables.add(wakeable)

    def set(self) -> None:
        """Set the flag, then wake every registered wait."""
        super().set()
        for wakeable in list(self._wakeables):
            wakeable.wake_all()


#: Set when the worker is asked to stop; a running request then hands itself back to the queue.
REQUESTED = StopFlag()

#: The running job's deadline (monotonic seconds), one per thread: a worker runs many jobs at once.
_deadline = threading.local()


class WorkerStopping(Exception):
    """Raised inside a job when its worker is stopping; RQ's retry requeues the job at once."""


def set_deadline(seconds: float | None) -> None:
    """Give the job running in this thread ``seconds`` from now (None or <= 0: no deadline).

    RQ's own time limit is a SIGALRM, which only the main thread can take; jobs run in threads of
    their own, so the job enforces its limit itself at every step (see :func:`check`).
    """
    _deadline.at = time.monotonic() + seconds if seconds and seconds > 0 else None
    _deadline.seconds = seconds


def check() -> None:
    """Stop the job in this thread if its worker is stopping or its time limit has passed.

    Raises:
        WorkerStopping: the worker got SIGTERM; the job goes back to the queue.
        JobTimeoutException: the job ran past its RQ timeout; RQ retries it as after SIGALRM.
    """
    if REQUESTED.is_set():
        raise WorkerStopping("the worker is stopping; the request goes back to the queue")
    at = getattr(_deadline, "at", None)
    if at is not None and time.monotonic() >= at:
        raise JobTimeoutException(f"Task exceeded maximum timeout value ({_deadline.seconds:g} seconds)")


def time_left() -> float | None:
    """Seconds until the deadline of the job in this thread (None: it has none)."""
    at = getattr(_deadline, "at", None)
    return None if at is None else max(0.0, at - time.monotonic())


def relay(event: threading.Event) -> Callable[[], None]:
    """A function that sets ``event`` and is safe to call in a signal handler.

    A signal handler runs in the main thread between two bytecodes, possibly while that thread
    holds the lock inside ``event.wait()``; ``event.set()`` there would wait for that lock forever,
    and so would every later stop signal. The returned function writes a byte to a pipe, which
    takes no lock, and a thread of its own sets the event. Call this with the stop signals blocked
    (see ``jobs.worker.main_thread_signals``) so that the thread never takes them.
    """
    read_end, write_end = os.pipe()

    def run() -> None:
        while os.read(read_end, 1):
            event.set()

    threading.Thread(target=run, name="stop-relay", daemon=True).start()
    return lambda: os.write(write_end, b"\0") and None
