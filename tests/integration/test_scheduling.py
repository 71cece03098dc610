"""Scheduled work and the janitor's own rules on a real Redis: one mover at a time, a dead holder
replaced within seconds, one janitor at a time, and the heartbeat grace after a Redis outage."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

from jobs import scheduling
from jobs.context import build_context
from jobs.janitor import LOCK_KEY as JANITOR_LOCK
from jobs.janitor import Janitor
from jobs.scheduling import ScheduledJobMover, run_movers
from tests.helpers import wait_for

QUEUE = "i2v"
#: RQ's started registry of the queue: ``<job id>:<execution id>`` scored by heartbeat expiry.
STARTED = f"rq:wip:{QUEUE}"


def due_job(redis: Redis) -> Job:
    """A callback retry whose time has come, waiting in the scheduled registry."""
    queue = Queue(QUEUE, connection=redis)
    job = queue.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), "jobs.delivery.deliver_callback", "k", 2)
    assert job.id in ScheduledJobRegistry(QUEUE, connection=redis).get_job_ids()
    return job


def queued(redis: Redis) -> list[str]:
    return [job_id.decode() for job_id in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)]


def test_only_the_lock_holder_moves_a_due_job_and_only_once(redis) -> None:
    holder, other = ScheduledJobMover(redis, QUEUE), ScheduledJobMover(redis, QUEUE)
    job = due_job(redis)
    assert holder.hold()
    assert not other.hold()
    assert other.move_due() == 0
    assert holder.move_due() == 1
    assert holder.move_due() == 0
    assert queued(redis) == [job.id]
    assert job.get_status() == JobStatus.QUEUED
    assert redis.get(holder.lock_key).decode() == holder.token


def test_a_move_is_dropped_when_the_lock_changes_hands_midway(redis, monkeypatch) -> None:
    """A holder that stalls past its lock's TTL while another process takes over commits nothing."""
    mover = ScheduledJobMover(redis, QUEUE)
    job = due_job(redis)
    assert mover.hold()
    fetch_many = Job.fetch_many

    def stalled(*args, **kwargs):
        redis.set(mover.lock_key, "i2v:elsewhere:1:x", ex=10)  # the lock expired and another took it
        return fetch_many(*args, **kwargs)

    monkeypatch.setattr(scheduling.Job, "fetch_many", stalled)
    assert mover.move_due() == 0
    assert not mover.held
    assert queued(redis) == []
    assert job.id in ScheduledJobRegistry(QUEUE, connection=redis).get_job_ids()


def test_a_dead_holders_lock_is_taken_over_within_seconds(redis, monkeypatch) -> None:
    """A stand-in takes the lock of a holder that died without releasing it, and moves the due job."""
    monkeypatch.setattr(scheduling, "LOCK_TTL", 2)
    dead = ScheduledJobMover(redis, QUEUE)
    assert dead.hold()  # ... and never refreshes it again
    job = due_job(redis)
    stop = threading.Event()
    stand_in = threading.Thread(target=run_movers, args=(redis, [QUEUE], stop, 0.5))
    started = time.monotonic()
    stand_in.start()
    try:
        wait_for(lambda: queued(redis) == [job.id], timeout=10, message="the stand-in to move the job")
        assert time.monotonic() - started < 2 + 0.5 + 4  # TTL, a try, and room for a loaded machine
        assert redis.get(dead.lock_key).decode() != dead.token
    finally:
        stop.set()
        stand_in.join(timeout=5)
    assert redis.get(dead.lock_key) is None, "a stopping mover gives its lock up"


def test_the_mover_thread_outlives_an_unexpected_error(redis, monkeypatch) -> None:
    """A surprise while moving (here a job that cannot be read) is logged; the next round moves the job."""
    job = due_job(redis)
    fetch_many = Job.fetch_many
    failures = []

    def flaky(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise ValueError("unreadable job")
        return fetch_many(*args, **kwargs)

    monkeypatch.setattr(scheduling.Job, "fetch_many", flaky)
    stop = threading.Event()
    mover = threading.Thread(target=run_movers, args=(redis, [QUEUE], stop, 0.2))
    mover.start()
    try:
        wait_for(lambda: queued(redis) == [job.id], timeout=10, message="the job moved after the error")
    finally:
        stop.set()
        mover.join(timeout=5)
    assert failures == [1]


def test_only_one_janitor_acts_at_a_time(settings, redis) -> None:
    ctx = build_context(settings, redis)
    first, second = Janitor(ctx), Janitor(ctx)
    redis.zadd(STARTED, {"gone-1:x": 1})
    done = first.tick()
    assert done is not None and done["abandoned"] == 1
    redis.zadd(STARTED, {"gone-2:x": 1})
    assert second.tick() is None, "the second janitor stays idle while the first holds the lock"
    assert redis.zcard(STARTED) == 1
    redis.delete(JANITOR_LOCK)  # the first janitor died and its lock expired
    done = second.tick()
    assert done is not None and done["abandoned"] == 1
    assert first.tick() is None


def test_janitor_gives_heartbeats_a_grace_after_a_redis_outage(settings, redis, redis_url) -> None:
    """After a sweep that waited out an outage, stale heartbeats are not taken for dead workers
    until one heartbeat period has passed."""
    ctx = build_context(settings)  # the janitor's own connection, which waits an outage out
    offset = [0.0]
    janitor = Janitor(ctx, clock=lambda: time.monotonic() + offset[0])
    redis.zadd(STARTED, {"stale-1:x": 1})
    assert janitor.tick()["abandoned"] == 1, "without an outage an expired execution is handed back"

    redis.zadd(STARTED, {"stale-2:x": 1})
    with Redis.from_url(redis_url) as pauser:
        pauser.execute_command("CLIENT", "PAUSE", int((Janitor.OUTAGE + 1) * 1000), "ALL")
    assert janitor.tick()["abandoned"] == 0, "the sweep that waited out the outage hands nothing back"
    assert janitor.tick()["abandoned"] == 0, "nor does the next one, within a heartbeat period"
    offset[0] += janitor.heartbeat_ttl + 1
    assert janitor.tick()["abandoned"] == 1


@pytest.fixture(autouse=True)
def _no_pause(redis_url: str):
    """Make sure no test leaves the shared Redis paused."""
    yield
    with Redis.from_url(redis_url) as conn:
        conn.execute_command("CLIENT", "UNPAUSE")
