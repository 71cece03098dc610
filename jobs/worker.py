"""The RQ worker the Procfile runs (inside ``rq worker-pool``): many requests at once, each in a thread.

A request spends minutes waiting (``time.sleep``-style waits on the stop flag, and polls), and a
waiting request needs a thread and a record in Redis, not a process of its own. So each worker
process runs up to ``WORKER_THREADS`` jobs at once, each in its own thread, and takes a job off
the queue only when one of its threads is free: queued requests stay in Redis for any idle
process. What RQ's fork per job gave is kept by other means:

- **Liveness.** One heartbeat thread per process refreshes the worker and every running
  execution and job in one pipeline (one round trip) every ``WORKER_HEARTBEAT_INTERVAL``, so the
  janitor notices a dead process within ``WORKER_HEARTBEAT_INTERVAL`` + 15 s and hands all its
  requests to live workers.
- **Time limits.** RQ's death penalty is a SIGALRM, which only the main thread can take (and one
  alarm per process cannot time many jobs): :class:`NoDeathPenalty` replaces it, and each job
  enforces its own limit at every step (``jobs.shutdown.check``), with a timeout on every outbound
  call, so one hung call holds only its own thread.
- **SIGTERM.** Every running request hands itself back to the queue at its next step (a wait is
  cut short at once; a provider call in progress finishes first), and the process exits once all
  its threads have.
- **Redis.** One connection pool per process, capped at :data:`REDIS_CONNECTIONS` however many
  threads run, shared by the worker loop, the heartbeat and the jobs.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from types import TracebackType
from typing import Any
from uuid import uuid4

from rq import Queue, SimpleWorker
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue as RQQueue
from rq.timeouts import BaseDeathPenalty
from rq.utils import current_timestamp, get_version, now, utcformat
from rq.worker import WorkerStatus
from rq.worker.base import StopRequested

from config import known_secrets, load_or_exit, mask
from jobs import shutdown
from jobs.context import resilient_redis, share_connection
from jobs.scheduling import STAND_IN_INTERVAL, start_movers
from logs import configure_logging

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

#: RQ's heartbeat of running executions (``Execution.heartbeat`` and ``Job.heartbeat``), for many at
#: once. A hash that no longer exists (its execution or job ended meanwhile) is not written again.
#: KEYS: per execution, its hash, its job's execution registry, the started registry, the job hash.
#: ARGV: now (whole seconds, RQ's registry scores), now (seconds), now (RQ's text stamp), then per
#: execution its started-registry member, its id and its heartbeat TTL.
BEAT = """
local now, stamp = tonumber(ARGV[1]), ARGV[3]
for i = 0, #KEYS / 4 - 1 do
  local execution, executions, started, job = KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4]
  local member, id, ttl = ARGV[3 * i + 4], ARGV[3 * i + 5], tonumber(ARGV[3 * i + 6])
  if redis.call('EXISTS', execution) == 1 then
    redis.call('HSET', execution, 'last_heartbeat', ARGV[2])
    redis.call('EXPIRE', execution, ttl)
  end
  redis.call('ZADD', started, 'XX', now + ttl, member)
  redis.call('ZADD', executions, 'XX', now + ttl + 60, id)
  redis.call('EXPIRE', executions, ttl + 60)
  if redis.call('EXISTS', job) == 1 then redis.call('HSET', job, 'last_heartbeat', stamp) end
end
return 1
"""
#: Executions per script call: a call holds Redis for its whole run.
BEAT_CHUNK = 200
log = logging.getLogger(__name__)

#: Redis connections one worker process opens at most, whatever ``WORKER_THREADS`` is. Two are held
#: for good (the queue's blocking dequeue and RQ's command channel); the scheduled-job mover and RQ's
#: end-of-job bookkeeping may each hold one while they ask for a second (a WATCHed transaction), so
#: they are bounded (one mover, :data:`FINISHING` jobs at a time) and 2 + 2 + 2 * 2 + the heartbeat
#: stay below the cap. Every other use takes a connection for one command or pipeline and gives it
#: back, so a thread that finds all in use only waits a moment: the cap cannot deadlock.
REDIS_CONNECTIONS = 10
#: Jobs of one process in RQ's end-of-job bookkeeping at once (see REDIS_CONNECTIONS).
FINISHING = 2
#: Seconds between two looks at a thread the process waits for (to end, or to finish its job).
WAIT_SLICE = 1.0


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


class NoDeathPenalty(BaseDeathPenalty):
    """RQ's time limit, turned off: jobs run in threads, where SIGALRM cannot be installed.

    RQ's default (``UnixSignalDeathPenalty``) calls ``signal.signal`` and ``signal.alarm``, which
    raise ``ValueError`` outside the main thread, and one process-wide alarm could not time many
    jobs anyway. The limit is kept inside the job instead: ``jobs.shutdown.set_deadline`` at its
    start, checked at every step of the pipeline. RQ also wraps success and failure callbacks in
    this class; they are short and every call in them has a timeout.
    """

    def setup_death_penalty(self) -> None:
        """Nothing to arm."""

    def cancel_death_penalty(self) -> None:
        """Nothing to disarm."""


class PipelineWorker(SimpleWorker):
    """An RQ worker that runs up to ``WORKER_THREADS`` jobs at once, each in its own thread.

    It validates the settings before it takes any job: a bad setting or a missing provider token
    stops the process at start with a message naming the variables, instead of failing every
    request later.

    RQ's worker hash has one ``state``: ``busy`` while at least one thread runs a job, ``idle``
    otherwise. Every running execution is in RQ's started registry and in the worker's execution
    set (``rq:worker:<name>:executions``), which is what ``rq info`` counts and rq-dashboard lists;
    the dashboard's "current job" of a worker is one of them.
    """

    #: Seconds a missed heartbeat is tolerated. RQ allows 60; a shorter grace lets the janitor
    #: hand a dead worker's request to a live one well within two minutes.
    HEARTBEAT_GRACE = 15

    death_penalty_class = NoDeathPenalty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = load_or_exit("worker", provider_tokens=True)
        configure_logging(settings)
        # Replace the CLI's plain connection: this one waits out Redis outages (see resilient_redis)
        # and opens at most REDIS_CONNECTIONS connections, shared by every thread of the process.
        # Each connection carries the worker's name, so CLIENT LIST shows whose connections they are.
        kwargs["name"] = kwargs.get("name") or uuid4().hex
        connection = resilient_redis(settings.redis_url, max_connections=REDIS_CONNECTIONS, client_name=kwargs["name"])
        share_connection(connection)
        kwargs["connection"] = connection
        if args:
            # The CLI built its queues on its own connection; rebuild them on this one.
            queues = [Queue(getattr(q, "name", q), connection=connection) for q in args[0]]
            args = (queues, *args[1:])
        super().__init__(*args, **kwargs)
        self.job_monitoring_interval = settings.worker_heartbeat_interval
        self.secrets = known_secrets(settings)
        self.threads = settings.worker_threads
        #: One permit per thread; the main thread takes one before it takes a job off the queue.
        self._free = threading.BoundedSemaphore(self.threads)
        #: Execution id -> (job, thread) of every job thread of this process.
        self._running: dict[str, tuple[Job, threading.Thread]] = {}
        #: Execution id -> (job, execution) of the executions the heartbeat keeps alive.
        self._beating: dict[str, tuple[Job, Execution]] = {}
        #: Held while a heartbeat is written and while an ended execution leaves ``_beating``: a
        #: beat never brings back the execution of a job that has just been cleaned up.
        self._lock = threading.Lock()
        self._beat_script = connection.register_script(BEAT)
        self._finishing = threading.BoundedSemaphore(FINISHING)
        self._ended = threading.Condition()
        self._dequeuing = False

    # -- the work loop ---------------------------------------------------------------------------

    def work(self, *args: Any, with_scheduler: bool = False, **kwargs: Any) -> bool:
        """RQ's work loop, with the heartbeat thread and a stand-in mover of scheduled jobs.

        ``rq worker-pool`` asks every worker for RQ's scheduler (``with_scheduler=True``), which
        forks a process that, once dead, is replaced only at a maintenance run ten minutes later;
        and a fork of a process running threads can inherit a lock held by a thread that does not
        exist in the child. The stand-in is a thread of this process instead (see jobs.scheduling);
        it moves scheduled jobs only while the janitor, which normally does it, is down.
        """
        queue_names = self.queue_names()
        self._stop_beating = threading.Event()
        with main_thread_signals():
            thread, stop = start_movers(self.connection, queue_names, STAND_IN_INTERVAL)
            self._request_hand_back = shutdown.relay(shutdown.REQUESTED)
            self._beater = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)
            self._beater.start()
        try:
            return super().work(*args, with_scheduler=False, **kwargs)
        finally:
            stop.set()
            thread.join(timeout=5)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """Take a job off the queue once a thread is free; until then the job stays for other processes.

        In burst mode (``timeout`` None) an empty queue ends the loop only once no job runs here,
        as with a worker that runs one job at a time.
        """
        self._dequeuing = True
        try:
            if self._stop_requested:
                # A stop signal came after the loop's own look and before the flag above was set.
                raise StopRequested()
            # No timeout: a stop signal interrupts the wait (its handler raises StopRequested), and a
            # process whose threads are all busy then wakes for nothing until one is free.
            self._free.acquire()
            try:
                while True:
                    result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                    if result is not None or timeout is not None or not self._wait_for_a_job_to_end():
                        break
            except BaseException:
                self._free.release()
                raise
            if result is None:
                self._free.release()
            return result
        finally:
            self._dequeuing = False

    def _wait_for_a_job_to_end(self) -> bool:
        """Wait until one of the running jobs ends; False at once if none runs."""
        with self._ended:
            if not self._running:
                return False
            self._ended.wait(WAIT_SLICE)
            return True

    def execute_job(self, job: Job, queue: RQQueue) -> None:
        """Start the job in a thread of its own and return: the loop then looks for the next one.

        The execution is recorded here, before the thread starts, so that RQ's started registry
        holds the job from the moment it left the queue; a job the janitor put back meanwhile is let
        go (see :meth:`_claim`).
        """
        execution = self.prepare_execution(job)
        if not self._claim(job, queue, execution):
            return
        thread = threading.Thread(target=self._run, args=(job, queue, execution), name=f"job-{job.id}", daemon=True)
        with self._lock:
            self._running[execution.id] = (job, thread)
            self._beating[execution.id] = (job, execution)
        with main_thread_signals():
            thread.start()

    def _claim(self, job: Job, queue: RQQueue, execution: Execution) -> bool:
        """Take the job out of the queue's intermediate list; False (and the execution undone) if it was gone.

        Taking a job, RQ moves it to that list; the janitor puts back a job that stays there without
        an execution for a heartbeat's lifetime (its worker died before starting it, see
        ``jobs.janitor.StrandedJobs``). A worker starved of CPU that long is not dead, and both
        would run the request. The execution is recorded first (so the janitor no longer takes the
        job for stranded), then whoever removes the id from the list owns the job: this worker, or
        the janitor, which has put it back for another worker, and this one lets it go.
        """
        if len(self.queues) != 1 or get_version(self.connection) < (6, 2, 0):
            return True  # RQ took the job without that list (several queues, or an old Redis)
        if self.connection.lrem(queue.intermediate_queue_key, 1, job.id):
            return True
        log.warning(
            "job put back on the queue before this worker started it; another worker runs it", extra={"job_id": job.id}
        )
        with self.connection.pipeline() as pipe:
            super().cleanup_execution(job, pipe, execution)
            pipe.execute()
        self._thread_freed()
        return False

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's bookkeeping at the start of a job, without its removal from the intermediate list:
        :meth:`_claim` has done that already (a second ``LREM`` would only cost a round trip)."""
        super().prepare_job_execution(job, remove_from_intermediate_queue=False)

    def _run(self, job: Job, queue: RQQueue, execution: Execution) -> None:
        """A job's thread: perform it with its time limit, then free the thread."""
        try:
            shutdown.set_deadline(job.timeout or self.queue_class.DEFAULT_TIMEOUT)
            self.perform_job(job, queue, execution)
        except Exception:  # perform_job handles the job's own failures; this is RQ's bookkeeping failing
            log.exception("the worker could not finish the job's bookkeeping", extra={"job_id": job.id})
        finally:
            shutdown.set_deadline(None)
            with self._lock:
                self._running.pop(execution.id, None)
                self._beating.pop(execution.id, None)
            self._thread_freed()

    def _thread_freed(self) -> None:
        """A thread's job ended (or was let go): idle if it was the last, and the thread free for the next."""
        with self._lock:
            idle = not self._running
        if idle:
            with contextlib.suppress(Exception):
                self.set_state(WorkerStatus.IDLE)
        self._free.release()
        with self._ended:
            self._ended.notify_all()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's state, but ``busy`` as long as any thread of this process runs a job."""
        if state == WorkerStatus.IDLE and self._running:
            state = WorkerStatus.BUSY
        super().set_state(state, pipeline=pipeline)

    def serialize(self) -> dict:
        """RQ's worker hash, with ``threads``: how many jobs this worker runs at once at most."""
        return {**super().serialize(), "threads": self.threads}

    def running_jobs(self) -> list[Job]:
        """The jobs this process runs now."""
        with self._lock:
            return [job for job, _ in self._running.values()]

    # -- heartbeats --------------------------------------------------------------------------------

    def _beat_forever(self) -> None:
        """The heartbeat thread: one beat every ``WORKER_HEARTBEAT_INTERVAL`` until the worker ends."""
        while not self._stop_beating.wait(self.job_monitoring_interval):
            try:
                self.beat()
            except Exception as exc:  # a missed beat is retried at the next one; this thread must not end
                log.warning("heartbeat failed: %s", type(exc).__name__)

    def beat(self) -> None:
        """Refresh the worker, and every running execution and job, in one pipeline (one round trip).

        What RQ's ``maintain_heartbeats`` writes for one job, for all of them at once, by a script
        (:data:`BEAT`): hundreds of jobs of a process cost one round trip per interval, not hundreds,
        and no Python command building per job.
        """
        worker_ttl = self.job_monitoring_interval + 60
        stamp = now()
        with self._lock, self.connection.pipeline() as pipe:
            running = list(self._beating.values())
            self.heartbeat(worker_ttl, pipeline=pipe)
            for chunk in range(0, len(running), BEAT_CHUNK):
                keys: list[str] = []
                args: list[Any] = [current_timestamp(), stamp.timestamp(), utcformat(stamp)]
                for job, execution in running[chunk : chunk + BEAT_CHUNK]:
                    working_time = (stamp - job.started_at).total_seconds() if job.started_at else 0.0
                    keys += [execution.key, ExecutionRegistry(job.id, pipe).key, job.started_job_registry.key, job.key]
                    args += [execution.composite_key, execution.id, self.get_heartbeat_ttl(job, working_time)]
                self._beat_script(keys=keys, args=args, client=pipe)
            results = pipe.execute()
            # As in RQ: a worker hash that had expired is written again in full.
            if results[0] == 1:
                pipe.hset(self.key, mapping=self.serialize())
                pipe.expire(self.key, worker_ttl)
                pipe.execute()

    def cleanup_execution(self, job: Job, pipeline: Any, execution: Execution | None = None) -> None:
        """RQ's clean-up of an ended execution, after the job has left the heartbeat's list."""
        if execution is not None:
            with self._lock:
                self._beating.pop(execution.id, None)
        super().cleanup_execution(job, pipeline, execution)

    # -- the end of a job --------------------------------------------------------------------------

    def handle_job_success(self, *args: Any, **kwargs: Any) -> None:
        """RQ's bookkeeping of a finished job, :data:`FINISHING` jobs at a time (see REDIS_CONNECTIONS)."""
        with self._finishing:
            super().handle_job_success(*args, **kwargs)

    def handle_job_retry(self, *args: Any, **kwargs: Any) -> None:
        """RQ's bookkeeping of a job that asked for a retry, :data:`FINISHING` jobs at a time."""
        with self._finishing:
            super().handle_job_retry(*args, **kwargs)

    def handle_job_failure(self, job: Job, queue: RQQueue, *args: Any, exc_string: str = "", **kwargs: Any) -> None:
        """Record a failure as RQ does, with every known secret masked in the traceback it stores.

        RQ keeps the traceback in Redis (the job hash, its results, the dashboard); a provider's
        error message or a local variable in it must not carry a token there.
        """
        with self._finishing:
            super().handle_job_failure(job, queue, *args, exc_string=mask(exc_string, self.secrets), **kwargs)

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

    # -- stopping ----------------------------------------------------------------------------------

    def subscribe(self) -> None:
        """RQ's command channel, listened to by a thread that must not take the stop signals."""
        with main_thread_signals():
            super().subscribe()

    def request_stop(self, signum: int, frame: Any) -> None:
        """On SIGTERM, have every running request hand itself back at once instead of finishing here.

        A platform restart (Heroku: SIGTERM, then SIGKILL 30 s later) would otherwise cut waits of
        minutes short anyway. Each request stops at its next step and goes back to the queue; a
        live worker resumes it from its record: same prediction, same Pika job, one callback.
        """
        # Stamp first: a pool forwards SIGINT while the platform sends SIGTERM, and the second
        # signal must find the first one recorded (see request_force_stop).
        self._shutdown_requested_date = now()
        # While the loop waits in the queue's blocking pop (BLMOVE), the requests hand back only once
        # it has left (teardown): Redis would give a job handed back meanwhile to that pending pop,
        # which moves it to RQ's intermediate list, where no worker looks for it until the janitor
        # puts it back a heartbeat lifetime later (RQ's own maintenance: ten minutes, and a retry).
        if not self._dequeuing:
            self._hand_back_running()
        super().request_stop(signum, frame)

    def _hand_back_running(self) -> None:
        """Have every running request hand itself back at its next step."""
        # Through the relay: REQUESTED.set() in a signal handler could wait forever on a lock the
        # interrupted main thread holds.
        getattr(self, "_request_hand_back", shutdown.REQUESTED.set)()

    def _shutdown(self) -> None:
        """Leave the loop at once while it waits for a thread or a job; else right after starting its job."""
        self._stop_requested = True
        if self._dequeuing:
            raise StopRequested()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """A second stop signal: ignored when it is the echo of the first (pool + platform)."""
        stamped = getattr(self, "_shutdown_requested_date", None)
        if stamped is None or now() - stamped < timedelta(seconds=1):
            return
        super().request_force_stop(signum, frame)

    def teardown(self) -> None:
        """Wait for every thread to end (hand back on SIGTERM, finish in burst mode), then leave RQ.

        The heartbeat goes on meanwhile: a thread inside a provider call hands back only when the
        call returns (at most ``HTTP_READ_TIMEOUT``).
        """
        if self._shutdown_requested_date is not None:
            # The loop has left the queue's blocking pop by now (see request_stop).
            self._hand_back_running()
        with self._lock:
            threads = [thread for _, thread in self._running.values()]
        if threads:
            log.info("waiting for the running jobs to end", extra={"jobs": len(threads)})
        started = time.monotonic()
        for thread in threads:
            while thread.is_alive():
                thread.join(WAIT_SLICE)
        if threads:
            log.info("all jobs ended", extra={"seconds": round(time.monotonic() - started, 2)})
        stop_beating = getattr(self, "_stop_beating", None)
        if stop_beating is not None:
            stop_beating.set()
            # A beat still under way would write the worker's hash again after its death.
            self._beater.join(timeout=10)
        super().teardown()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long the current execution counts as alive without another heartbeat."""
        remaining = job.timeout - working_time if job.timeout and job.timeout > 0 else self.job_monitoring_interval
        return int(min(remaining, self.job_monitoring_interval)) + self.HEARTBEAT_GRACE
