"""Moves due scheduled RQ jobs (callback retries, retries after a delay) onto their queue, without forking.

RQ's own scheduler runs as a process forked from one worker and holds ``rq:scheduler-lock:<queue>``
for 61 s; when it dies, other workers look for the lock only at their maintenance run, every ten
minutes, and nothing moves scheduled jobs meanwhile. This module replaces it with a thread that
never forks (a fork of a process running many threads can inherit a lock held by a thread that
does not exist in the child). It takes the same lock key, with a short TTL, so a dead holder is
replaced within seconds:

- the janitor (the Procfile's ``scheduler``) tries for the lock every second, and while it holds
  the lock moves due jobs every second;
- every worker process runs a stand-in that tries for the lock only every few seconds (hundreds of
  workers must stay cheap), so scheduled work keeps moving while the janitor is down.

Only the holder moves jobs, and each move commits only if the lock was still its own (``WATCH``), so
no two processes move the same job twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from uuid import uuid4

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.scripts import ACQUIRE_OR_REFRESH_LOCK_SCRIPT, release_lock
from rq.utils import current_timestamp

log = logging.getLogger(__name__)

#: Seconds the lock outlives its holder's last refresh: how long a dead holder blocks the others.
LOCK_TTL = 10
#: Seconds between two moves by the holder (and between the janitor's tries for the lock).
MOVE_INTERVAL = 1.0
#: Seconds between a worker's tries for the lock while another process holds it. Each try wakes the
#: process: with hundreds of workers, every 5 s cost more CPU than all their waiting requests. At 20 s
#: a dead holder is still replaced within about 31 s (TTL + one interval + one move), inside the 60 s
#: a callback retry may be late.
STAND_IN_INTERVAL = 20.0


class ScheduledJobMover:
    """Holds the scheduler lock of one queue when it can, and moves that queue's due jobs while it does.

    Args:
        connection: the Redis connection (shared with the process's other work; thread-safe).
        queue_name: the RQ queue whose scheduled registry this moves.
    """

    def __init__(self, connection: Redis, queue_name: str) -> None:
        self.connection = connection
        self.queue = Queue(queue_name, connection=connection)
        self.registry = ScheduledJobRegistry(queue_name, connection=connection)
        self.lock_key = RQScheduler.get_locking_key(queue_name)
        # The pid lets an operator (and the tests) see which process holds the lock.
        self.token = f"i2v:{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"
        self._acquire = connection.register_script(ACQUIRE_OR_REFRESH_LOCK_SCRIPT)
        self.held = False

    def hold(self) -> bool:
        """Take the lock if it is free, or refresh it if it is ours; True while this holds it."""
        held = self._acquire(keys=[self.lock_key], args=[self.token, LOCK_TTL]) in (1, 2)
        if held and not self.held:
            log.info("took the scheduler lock", extra={"queue": self.queue.name})
        self.held = held
        return held

    def release(self) -> None:
        """Give the lock up (if it is still ours) so another process takes it at once."""
        if self.held:
            release_lock(self.connection, self.lock_key, self.token)
            self.held = False

    def move_due(self) -> int:
        """Enqueue the jobs whose time has come, as RQ's scheduler does; returns how many moved.

        Nothing moves unless the lock is ours from the check to the commit: if it changed hands
        in between (this process stalled past the TTL), the transaction is dropped.
        """
        with self.connection.pipeline() as pipe:
            pipe.watch(self.lock_key)
            if _text(pipe.get(self.lock_key)) != self.token:
                self.held = False
                return 0
            job_ids = self.registry.get_jobs_to_schedule(current_timestamp())
            if not job_ids:
                return 0
            jobs = Job.fetch_many(job_ids, connection=self.connection)
            pipe.multi()
            # The same steps as RQScheduler.enqueue_scheduled_jobs, in one transaction.
            for job_id, job in zip(job_ids, jobs, strict=True):
                if job is not None:
                    if job.has_rate_limit:
                        self.queue._enqueue_rate_limited_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                    else:
                        self.queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                self.registry.remove(job_id, pipeline=pipe)
            try:
                pipe.execute()
            except WatchError:
                self.held = False
                return 0
        return sum(job is not None for job in jobs)


def run_movers(connection: Redis, queue_names: list[str], stop: threading.Event, try_every: float) -> None:
    """Move scheduled jobs of ``queue_names`` until ``stop`` is set, then give the locks up.

    Args:
        connection: the Redis connection.
        queue_names: the queues to look after.
        stop: set to end the loop.
        try_every: seconds between tries for a lock held by another process.
    """
    movers = [ScheduledJobMover(connection, name) for name in queue_names]
    # The first try at once (a lone process moves jobs from the start); later ones spread out, so
    # that workers started together do not all ask at the same moment.
    next_try = 0.0
    while not stop.is_set():
        trying = time.monotonic() >= next_try
        if trying:
            next_try = time.monotonic() + try_every * random.uniform(0.8, 1.0)
        for mover in movers:
            try:
                if mover.held or trying:
                    mover.hold()
                if mover.held:
                    moved = mover.move_due()
                    if moved:
                        log.info("moved scheduled jobs", extra={"queue": mover.queue.name, "jobs": moved})
            except Exception as exc:  # whatever it was, the next round tries again: this thread must not end
                mover.held = False
                unexpected = not isinstance(exc, RedisError)
                log.error("cannot move scheduled jobs: %s", type(exc).__name__, exc_info=unexpected)
        # A stand-in sleeps until its next try: hundreds of idle waits must not wake every second.
        holding = any(mover.held for mover in movers)
        stop.wait(MOVE_INTERVAL if holding else max(0.0, next_try - time.monotonic()))
    for mover in movers:
        with contextlib.suppress(RedisError):  # else the lock expires by itself
            mover.release()


def start_movers(
    connection: Redis, queue_names: list[str], try_every: float
) -> tuple[threading.Thread, threading.Event]:
    """Run :func:`run_movers` in a daemon thread; returns the thread and the event that stops it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_movers, args=(connection, queue_names, stop, try_every), name="scheduled-jobs", daemon=True
    )
    thread.start()
    return thread, stop


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
