"""The RQ worker the Procfile runs (inside ``rq worker-pool``).

It runs each job in its own process, without forking a work-horse per job: a request spends
minutes waiting, and a fork per request doubles the memory each one holds. What the fork gave
is kept by other means: a heartbeat thread shows the job is alive (so the janitor notices a
dead worker within ``WORKER_HEARTBEAT_INTERVAL`` + 15 s), and on SIGTERM the running request
hands itself back to the queue at its next step instead of being cut off by the platform.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from types import TracebackType
from typing import Any

from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue as RQQueue
from rq.utils import now
from rq.worker import WorkerStatus

from config import known_secrets, load_or_exit, mask
from jobs import shutdown
from jobs.context import resilient_redis, share_connection
from jobs.scheduling import STAND_IN_INTERVAL, start_movers
from logs import configure_logging

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
log = logging.getLogger(__name__)


@contextlib.contextmanager
def main_thread_signals() -> Iterator[None]:
    """Start threads inside this block so that SIGTERM and SIGINT always reach the main thread.

    The kernel may deliver a process signal to any thread that does not block it; if a helper
    thread takes it, the main thread stays blocked in Redis (BLMOVE waits for minutes) and the
    worker does not stop. Threads inherit the signal mask of the thread that starts them.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class PipelineWorker(SimpleWorker):
    """An RQ worker that validates the settings before it takes any job.

    A bad setting or a missing provider token stops the process at start with a message naming
    the variables, instead of failing every request later.
    """

    #: Seconds a missed heartbeat is tolerated. RQ allows 60; a shorter grace lets the janitor
    #: hand a dead worker's request to a live one well within two minutes.
    HEARTBEAT_GRACE = 15

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = load_or_exit("worker", provider_tokens=True)
        configure_logging(settings)
        # Replace the CLI's plain connection: this one waits out Redis outages (see resilient_redis).
        connection = resilient_redis(settings.redis_url)
        share_connection(connection)
        kwargs["connection"] = connection
        if args:
            # The CLI built its queues on its own connection; rebuild them on this one.
            queues = [Queue(getattr(q, "name", q), connection=connection) for q in args[0]]
            args = (queues, *args[1:])
        super().__init__(*args, **kwargs)
        self.job_monitoring_interval = settings.worker_heartbeat_interval
        self.secrets = known_secrets(settings)

    def handle_job_failure(self, job: Job, queue: RQQueue, *args: Any, exc_string: str = "", **kwargs: Any) -> None:
        """Record a failure as RQ does, with every known secret masked in the traceback it stores.

        RQ keeps the traceback in Redis (the job hash, its results, the dashboard); a provider's
        error message or a local variable in it must not carry a token there.
        """
        super().handle_job_failure(job, queue, *args, exc_string=mask(exc_string, self.secrets), **kwargs)

    def work(self, *args: Any, with_scheduler: bool = False, **kwargs: Any) -> bool:
        """RQ's work loop, with a stand-in mover of scheduled jobs instead of RQ's forked scheduler.

        ``rq worker-pool`` asks every worker for RQ's scheduler (``with_scheduler=True``), which
        forks a process that, once dead, is replaced only at a maintenance run ten minutes later.
        The stand-in is a thread of this process instead (see jobs.scheduling); it moves scheduled
        jobs only while the janitor, which normally does it, is down.
        """
        queue_names = self.queue_names()
        with main_thread_signals():
            thread, stop = start_movers(self.connection, queue_names, STAND_IN_INTERVAL)
            self._request_hand_back = shutdown.relay(shutdown.REQUESTED)
        try:
            return super().work(*args, with_scheduler=False, **kwargs)
        finally:
            stop.set()
            thread.join(timeout=5)

    def execute_job(self, job: Job, queue: RQQueue) -> None:
        """Run the job here, with a thread keeping its heartbeat fresh."""
        execution = self.prepare_execution(job)
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.job_monitoring_interval):
                with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                    self.maintain_heartbeats(job, execution)

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        with main_thread_signals():
            thread.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            thread.join()
        self.set_state(WorkerStatus.IDLE)

    def _finalize_failure(
        self,
        job: Job,
        queue: RQQueue,
        execution: Execution,
        exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
    ) -> None:
        """Hand a request stopped by SIGTERM back to the queue without spending one of its retries.

        A deploy, a daily restart or a scale-down is not a failure of the request: however many
        come in a row, the request resumes. Anything else goes through RQ's failure handling, which
        retries it while retries last. (This overrides RQ's terminal failure step, rq 3.0.)
        """
        if exc_info[0] is None or not issubclass(exc_info[0], shutdown.WorkerStopping):
            super()._finalize_failure(job, queue, execution, exc_info)
            return
        job.ended_at = now()
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        log.info("handed the job back to the queue", extra={"job_id": job.id, "retries_left": job.retries_left})

    def subscribe(self) -> None:
        """RQ's command channel, listened to by a thread that must not take the stop signals."""
        with main_thread_signals():
            super().subscribe()

    def request_stop(self, signum: int, frame: Any) -> None:
        """On SIGTERM, hand the running request back at once instead of finishing it here.

        A platform restart (Heroku: SIGTERM, then SIGKILL 30 s later) would otherwise cut a wait of
        minutes short anyway. The request stops at its next step and RQ requeues it; a live worker
        resumes it from its record: same prediction, same Pika job, one callback.
        """
        # Through the relay: REQUESTED.set() here could wait forever on a lock this thread holds.
        getattr(self, "_request_hand_back", shutdown.REQUESTED.set)()
        # Stamp first: a pool forwards SIGINT while the platform sends SIGTERM, and the second
        # signal must find the first one recorded (see request_force_stop).
        self._shutdown_requested_date = now()
        super().request_stop(signum, frame)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """A second stop signal: ignored when it is the echo of the first (pool + platform)."""
        stamped = getattr(self, "_shutdown_requested_date", None)
        if stamped is None or now() - stamped < timedelta(seconds=1):
            return
        super().request_force_stop(signum, frame)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long the current execution counts as alive without another heartbeat."""
        remaining = job.timeout - working_time if job.timeout and job.timeout > 0 else self.job_monitoring_interval
        return int(min(remaining, self.job_monitoring_interval)) + self.HEARTBEAT_GRACE
