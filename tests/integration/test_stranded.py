"""Jobs stranded between a worker's dequeue and its start, on a real Redis: when the janitor puts
them back on the queue, and when it must not (a job being started, already queued, or ended)."""

from __future__ import annotations

from rq import Queue
from rq.job import JobStatus

from jobs.context import build_context
from jobs.janitor import StrandedJobs, sweep

QUEUE = "i2v"
INTERMEDIATE = f"rq:queue:{QUEUE}:intermediate"
#: RQ's started registry of the queue: ``<job id>:<execution id>`` scored by heartbeat expiry.
STARTED = f"rq:wip:{QUEUE}"
AFTER = 10.0


class Clock:
    """Monotonic seconds that the test moves forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queued(redis) -> list[str]:
    return [job_id.decode() for job_id in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)]


def strand(redis) -> str:
    """Enqueue a job and take it off the queue as a worker does, without starting it."""
    job = Queue(QUEUE, connection=redis).enqueue("jobs.delivery.deliver_callback", "k", 1)
    assert redis.lmove(f"rq:queue:{QUEUE}", INTERMEDIATE).decode() == job.id
    return job.id


def test_a_job_stranded_for_a_heartbeat_lifetime_goes_back_once(settings, redis) -> None:
    ctx, clock = build_context(settings, redis), Clock()
    stranded = StrandedJobs(AFTER, clock)
    job_id = strand(redis)
    assert stranded.put_back(ctx) == 0
    clock.now += AFTER - 1
    assert stranded.put_back(ctx) == 0, "a live worker may still be about to start it"
    clock.now += 1
    assert stranded.put_back(ctx) == 1
    assert queued(redis) == [job_id]
    assert redis.llen(INTERMEDIATE) == 0
    clock.now += AFTER
    assert stranded.put_back(ctx) == 0
    assert queued(redis) == [job_id]


def test_a_job_with_an_execution_or_seen_only_once_stays(settings, redis) -> None:
    ctx, clock = build_context(settings, redis), Clock()
    stranded = StrandedJobs(AFTER, clock)
    job_id = strand(redis)
    redis.zadd(STARTED, {f"{job_id}:exec": clock.now + 100})
    assert stranded.put_back(ctx) == 0
    clock.now += AFTER * 3
    assert stranded.put_back(ctx) == 0, "a started job is the heartbeat check's business"
    assert queued(redis) == []
    # Its execution ends without the list entry going (a worker killed mid-start): now seen for
    # the first time as stranded, so the wait starts over.
    redis.delete(STARTED)
    assert stranded.put_back(ctx) == 0
    clock.now += AFTER
    assert stranded.put_back(ctx) == 1


def test_a_stale_entry_of_a_queued_or_ended_job_is_only_dropped(settings, redis) -> None:
    ctx, clock = build_context(settings, redis), Clock()
    stranded = StrandedJobs(AFTER, clock)
    requeued, ended = strand(redis), strand(redis)
    redis.rpush(f"rq:queue:{QUEUE}", requeued)  # RQ's retry queued it again meanwhile
    redis.hset(f"rq:job:{ended}", "status", JobStatus.FINISHED.value)
    stranded.put_back(ctx)
    clock.now += AFTER
    assert stranded.put_back(ctx) == 0
    assert queued(redis) == [requeued]
    assert redis.llen(INTERMEDIATE) == 0


def test_the_sweep_after_a_redis_outage_puts_nothing_back(settings, redis) -> None:
    ctx, clock = build_context(settings, redis), Clock()
    stranded = StrandedJobs(AFTER, clock)
    job_id = strand(redis)
    assert sweep(ctx, stranded=stranded)["stranded"] == 0
    clock.now += AFTER
    assert sweep(ctx, hand_back_abandoned=False, stranded=stranded)["stranded"] == 0
    assert sweep(ctx, stranded=stranded)["stranded"] == 0, "after an outage the wait starts over"
    clock.now += AFTER
    assert sweep(ctx, stranded=stranded)["stranded"] == 1
    assert queued(redis) == [job_id]
