"""The janitor: makes sure every request keeps moving after crashes, and every callback goes out.

The Procfile runs it as ``scheduler``. Every ``JANITOR_INTERVAL`` seconds it

- hands RQ the executions whose worker stopped heart-beating (a SIGKILL, an OOM kill): RQ retries
  them, and the job resumes from its record — the same prediction, the same Pika job;
- re-enqueues unfinished requests whose job is gone, and fails those whose job failed for good;
- restarts callback delivery that a crash interrupted;
- puts back on the queue the jobs a worker took off it and died before starting (see
  :class:`StrandedJobs`);
- removes stored videos older than ``MEDIA_TTL`` (disk store; Redis expires its own).

Besides, a thread of it moves due scheduled jobs (callback retries) every second (jobs.scheduling).

Workers only notice abandoned jobs between jobs, which with long waits may be never; this process
makes recovery independent of that.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from config import load_or_exit
from jobs import shutdown
from jobs.context import Context, build_context
from jobs.delivery import claim_ttl
from jobs.errors import InternalError
from jobs.pipeline import fail
from jobs.scheduling import MOVE_INTERVAL, start_movers
from jobs.store import Record, enqueue_delivery, enqueue_pipeline
from jobs.worker import PipelineWorker, main_thread_signals
from logs import configure_logging

log = logging.getLogger(__name__)

LOCK_KEY = "i2v:janitor"
PENDING = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED})


def job_status(ctx: Context, job_id: str) -> JobStatus | None:
    """The RQ status of a job, or None when the job does not exist."""
    try:
        return Job.fetch(job_id, connection=ctx.redis).get_status()
    except NoSuchJobError:
        return None


# Put a stranded job back at the front of its queue if it still waits to run and is not there
# already; otherwise only drop the stale entry. KEYS: intermediate list, queue list, job hash.
_PUT_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[3], 'status') ~= 'queued' or redis.call('LPOS', KEYS[2], ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"""


class StrandedJobs:
    """Jobs a worker took off the queue and died (or was stopped) before starting: put back after a while.

    Taking a job, RQ moves its id from the queue to an intermediate list; starting it, the worker
    records the execution and drops the id from that list. A worker killed in between leaves the
    job there, still ``queued`` (so :func:`check_request` leaves it alone), and only RQ's own
    maintenance looks, ten minutes or more later. A job found there without an execution on every
    sweep for ``after`` seconds (a heartbeat's lifetime: no live worker takes that long to start a
    job) goes back to the front of its queue.

    Args:
        after: seconds a job must stay stranded before it is put back.
        clock: monotonic seconds (tests move it forward).
    """

    def __init__(self, after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self.clock = clock
        #: Job id -> when this process first saw it stranded, for the jobs stranded at the last look.
        self.seen: dict[str, float] = {}

    def put_back(self, ctx: Context) -> int:
        """Put back the jobs stranded for long enough; returns how many went back on the queue."""
        queue = ctx.queue
        waiting = queue.intermediate_queue.get_job_ids()
        if not waiting:
            self.seen = {}
            return 0
        started = set(queue.started_job_registry.get_job_ids(cleanup=False))
        now = self.clock()
        self.seen = {job_id: self.seen.get(job_id, now) for job_id in waiting if job_id not in started}
        put_back = ctx.redis.register_script(_PUT_BACK)
        moved = []
        for job_id, first_seen in list(self.seen.items()):
            if now - first_seen < self.after:
                continue
            del self.seen[job_id]
            keys = [queue.intermediate_queue_key, queue.key, Job.key_for(job_id)]
            if put_back(keys=keys, args=[job_id]):
                moved.append(job_id)
        if moved:
            log.warning("jobs stranded by a dead worker put back on the queue", extra={"jobs": moved})
        return len(moved)

    def forget(self) -> None:
        """Start over: after a Redis outage a live worker may have been slow to start its job."""
        self.seen = {}


def sweep(ctx: Context, *, hand_back_abandoned: bool = True, stranded: StrandedJobs | None = None) -> dict[str, int]:
    """One round of checks. Returns counts of what it did, for logs and tests.

    Args:
        ctx: the context.
        hand_back_abandoned: False right after a Redis outage, when heartbeats look stale only
            because nobody could write them; live workers get one heartbeat period to catch up.
        stranded: what the caller knows of jobs stranded between a worker's dequeue and start;
            None to leave them alone.
    """
    done = {"abandoned": 0, "stranded": 0, "requeued": 0, "failed": 0, "redelivered": 0, "media_removed": 0}
    registry = StartedJobRegistry(queue=ctx.queue)
    expired = registry.get_expired_job_ids() if hand_back_abandoned else []
    if expired:
        registry.cleanup()
        done["abandoned"] = len(expired)
        log.warning("abandoned jobs handed back to RQ", extra={"jobs": expired})
    if stranded is not None:
        if hand_back_abandoned:
            done["stranded"] = stranded.put_back(ctx)
        else:
            stranded.forget()
    done["media_removed"] = ctx.media.expire()
    for key in ctx.store.active(older_than=ctx.settings.janitor_grace):
        record = ctx.store.get_by_key(key)
        if record is None:
            ctx.store.settle(key)
        elif not record.terminal:
            outcome = check_request(ctx, record)
            if outcome:
                done[outcome] += 1
        elif record.callback_status == "pending":
            done["redelivered"] += check_delivery(ctx, record)
        else:
            ctx.store.settle(key)
    return done


def check_request(ctx: Context, record: Record) -> str | None:
    """Make sure an unfinished request has a live job; say what was done about it, if anything."""
    status = job_status(ctx, record.identity.job_id)
    if status in PENDING:
        return None
    if status == JobStatus.FAILED:
        # RQ gave up (retries used up) but the failure callback never ran: fail the request here.
        fail(ctx, record, InternalError("the pipeline job failed and could not be retried"))
        enqueue_delivery(ctx.queue, record.identity)
        return "failed"
    with ctx.redis.pipeline() as pipe:
        enqueue_pipeline(ctx.queue, record, ctx.settings.job_timeout, pipe)
        pipe.execute()
    log.warning("re-enqueued a request whose job was gone", extra={"request_id": record.request_id, "rq": status})
    return "requeued"


def check_delivery(ctx: Context, record: Record) -> int:
    """Restart a callback whose next attempt is overdue and not queued; 1 if it was restarted."""
    attempt = record.callback_attempts + 1
    due = _timestamp(record.callback_next_attempt_at) if record.callback_attempts else _timestamp(record.updated_at)
    overdue = time.time() - (due or 0) > claim_ttl(ctx)
    if not overdue or job_status(ctx, record.identity.delivery_job_id(attempt)) in PENDING:
        return 0
    enqueue_delivery(ctx.queue, record.identity, attempt)
    log.warning("restarted an interrupted callback", extra={"request_id": record.request_id, "attempt": attempt})
    return 1


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


class Janitor:
    """The janitor's loop, one :meth:`tick` at a time: the lock, the sweep, and the trust in heartbeats.

    Args:
        ctx: the context.
        clock: monotonic seconds (tests move it forward).
    """

    #: A sweep that takes longer than this waited out a Redis outage.
    OUTAGE = 5.0

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{id(self)}".encode()
        self.lock_ttl = max(5, int(ctx.settings.janitor_interval * 3))
        self.heartbeat_ttl = ctx.settings.worker_heartbeat_interval + PipelineWorker.HEARTBEAT_GRACE
        self.trust_heartbeats_at = 0.0
        self.stranded = StrandedJobs(self.heartbeat_ttl, clock)

    def tick(self) -> dict[str, int] | None:
        """One round: take or keep the lock, then sweep. None when another janitor holds the lock.

        Raises:
            RedisError: Redis failed in a way its client does not retry.
        """
        started = self.clock()
        try:
            # One janitor at a time: a second one (a scaled-out dyno) stays idle while the first lives.
            redis = self.ctx.redis
            mine = redis.set(LOCK_KEY, self.identity, nx=True, ex=self.lock_ttl)
            if not mine and redis.get(LOCK_KEY) != self.identity:
                return None
            redis.expire(LOCK_KEY, self.lock_ttl)
            # Checked after the lock's round trips too: the first sweep after an outage must not
            # take the heartbeats that nobody could write during it for dead workers.
            self._note_outage(started)
            return sweep(self.ctx, hand_back_abandoned=self.clock() >= self.trust_heartbeats_at, stranded=self.stranded)
        finally:
            self._note_outage(started)

    def _note_outage(self, started: float) -> None:
        """Give workers one heartbeat period if this round has waited out a Redis outage."""
        if self.clock() - started > self.OUTAGE:
            # Heartbeats could not be written meanwhile.
            self.trust_heartbeats_at = max(self.trust_heartbeats_at, self.clock() + self.heartbeat_ttl)


def main() -> int:
    """Run sweeps until SIGTERM or SIGINT; Redis outages are logged and waited out."""
    settings = load_or_exit("janitor")
    configure_logging(settings)
    ctx = build_context(settings)
    stop = threading.Event()
    # Threads started here must leave the stop signals to the main thread, which waits on ``stop``.
    with main_thread_signals():
        request_stop = shutdown.relay(stop)
        # Scheduled jobs (callback retries) move every second, whatever the sweep interval.
        mover, stop_mover = start_movers(ctx.redis, [ctx.queue.name], MOVE_INTERVAL)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: request_stop())
    log.info("janitor started", extra={"interval_s": settings.janitor_interval})
    janitor = Janitor(ctx)
    while not stop.is_set():
        try:
            done = janitor.tick()
            if done and any(done.values()):
                log.info("janitor sweep", extra=done)
        except RedisError as exc:
            log.error("janitor cannot reach Redis: %s", type(exc).__name__)
        stop.wait(settings.janitor_interval)
    stop_mover.set()
    mover.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
