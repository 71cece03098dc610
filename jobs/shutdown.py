"""The worker's "stop now" flag, set on SIGTERM; the pipeline checks it between steps and waits on it."""

import threading

#: Set when the worker is asked to stop; a running request then hands itself back to the queue.
REQUESTED = threading.Event()


class WorkerStopping(Exception):
    """Raised inside a job when its worker is stopping; RQ's retry requeues the job at once."""
