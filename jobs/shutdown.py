"""The worker's "stop now" flag, set on SIGTERM and read by the pipeline between steps."""

import threading

#: Set when the worker is asked to stop; a running request then hands itself back to the queue.
REQUESTED = threading.Event()


class WorkerStopping(Exception):
    """Raised inside a job when its worker is stopping; RQ's retry requeues the job at once."""
