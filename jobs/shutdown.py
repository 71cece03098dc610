"""The worker's "stop now" flag, set on SIGTERM; the pipeline checks it between steps and waits on it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

#: Set when the worker is asked to stop; a running request then hands itself back to the queue.
REQUESTED = threading.Event()


class WorkerStopping(Exception):
    """Raised inside a job when its worker is stopping; RQ's retry requeues the job at once."""


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
