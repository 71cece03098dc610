"""How requests sleep: in the process's waiting room, which does their Redis work in batches.

A SIGTERM, a cancel or the job's deadline ends a sleep early; a sleeping request makes no Redis call
of its own; its progress reaches the record within a second, never over a record that has ended.
"""

from __future__ import annotations

import threading
import time

import pytest
from redis import Redis
from rq.timeouts import JobTimeoutException

from jobs import pipeline, shutdown
from jobs.errors import RequestCanceled
from jobs.shutdown import WorkerStopping
from jobs.states import Status
from jobs.store import Record
from tests.helpers import wait_for, waiting_context


@pytest.fixture(autouse=True)
def no_stop_flag():
    shutdown.REQUESTED.clear()
    shutdown.set_deadline(None)
    yield
    shutdown.REQUESTED.clear()
    shutdown.set_deadline(None)


def record(request_id: str = "r") -> Record:
    return Record(request_id=request_id, image_url="https://cdn.example.com/a.jpg")


def room_threads() -> int:
    return sum(thread.name == "waiting-room" for thread in threading.enumerate())


def test_sigterm_wakes_a_long_sleep_at_once(redis: Redis) -> None:
    ctx = waiting_context(redis, 10.0)
    threading.Timer(0.2, shutdown.REQUESTED.set).start()
    started = time.monotonic()
    with pytest.raises(WorkerStopping):
        pipeline.sleep(ctx, record(), 60)
    assert time.monotonic() - started < 2


def test_a_cancel_wakes_a_sleeping_request_within_three_polls(redis: Redis) -> None:
    ctx = waiting_context(redis, 0.1)  # cancels are read every 0.3 s
    rec = record()
    threading.Timer(0.2, lambda: redis.hset(rec.key, "cancel_requested", "1")).start()
    started = time.monotonic()
    with pytest.raises(RequestCanceled):
        pipeline.sleep(ctx, rec, 30)
    assert time.monotonic() - started < 2


def test_a_cancel_wakes_only_its_own_request(redis: Redis) -> None:
    ctx = waiting_context(redis, 0.1)
    outcome: dict[str, str] = {}

    def wait(request_id: str) -> None:
        try:
            pipeline.sleep(ctx, record(request_id), 1.5)
            outcome[request_id] = "slept"
        except RequestCanceled:
            outcome[request_id] = "canceled"

    threads = [threading.Thread(target=wait, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    redis.hset(record("a").key, "cancel_requested", "1")
    for thread in threads:
        thread.join()
    assert outcome == {"a": "canceled", "b": "slept"}


def test_sleeping_requests_share_one_cancel_read_per_interval(redis: Redis) -> None:
    """Forty requests asleep for a second: a few batched reads in all, not one per request."""
    ctx = waiting_context(redis, 0.1)
    batches: list[int] = []
    read = ctx.store.canceled

    def counted(keys: list[str]) -> set[str]:
        batches.append(len(keys))
        return read(keys)

    ctx.store.canceled = counted
    threads = [threading.Thread(target=pipeline.sleep, args=(ctx, record(f"r{i}"), 1.0)) for i in range(40)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= len(batches) <= (time.monotonic() - started) / 0.3 + 1
    assert max(batches) > 20  # each read covers the requests asleep at that moment


def test_a_sleep_stops_at_the_jobs_deadline(redis: Redis) -> None:
    """The time limit RQ's SIGALRM gave: a sleep ends at the job's deadline with RQ's timeout exception."""
    ctx = waiting_context(redis, 10.0)
    shutdown.set_deadline(0.3)
    started = time.monotonic()
    with pytest.raises(JobTimeoutException):
        pipeline.sleep(ctx, record(), 20)
    assert time.monotonic() - started < 1.5


def test_a_step_always_reads_the_flag(redis: Redis) -> None:
    ctx, rec = waiting_context(redis, 10.0), record()
    pipeline.check_cancel(ctx, rec)
    redis.hset(rec.key, "cancel_requested", "1")
    with pytest.raises(RequestCanceled):
        pipeline.check_cancel(ctx, rec)


def test_progress_is_written_in_batches_and_never_over_an_ended_record(redis: Redis) -> None:
    ctx = waiting_context(redis, 10.0)
    live = [record(f"live{i}") for i in range(20)]
    ended = record("ended")
    for rec in live:
        redis.hset(rec.key, mapping={"status": Status.PROCESSING, "version": 1})
    redis.hset(ended.key, mapping={"status": Status.COMPLETED, "provider_progress": 100, "version": 1})
    writes: list[int] = []
    write = ctx.store.write_progress

    def counted(progress: dict[str, int]) -> None:
        writes.append(len(progress))
        write(progress)

    ctx.store.write_progress = counted
    for rec in live:
        ctx.waiting.note_progress(rec.key, 10)
        ctx.waiting.note_progress(rec.key, 42)  # only the last value is written
    ctx.waiting.note_progress(ended.key, 42)
    wait_for(lambda: room_threads() == 0, 5, message="the waiting room to finish its work")
    assert sum(writes) == 21 and len(writes) <= 2
    for rec in live:
        assert redis.hmget(rec.key, "provider_progress", "version") == [b"42", b"2"]
        assert redis.ttl(rec.key) > 0
    assert redis.hmget(ended.key, "provider_progress", "version") == [b"100", b"1"]


def test_the_rooms_thread_runs_only_while_someone_sleeps(redis: Redis) -> None:
    ctx = waiting_context(redis, 0.1)
    wait_for(lambda: room_threads() == 0, 5, message="no waiting room thread before")
    sleeper = threading.Thread(target=pipeline.sleep, args=(ctx, record(), 0.5))
    sleeper.start()
    wait_for(lambda: room_threads() == 1, 5, message="the room's thread to start")
    sleeper.join()
    wait_for(lambda: room_threads() == 0, 5, message="the room's thread to end")


def test_polls_land_on_the_beat_and_move_by_at_most_half_of_one() -> None:
    """A poll's wait ends on the process's shared grid of POLL_BEAT seconds, never more than half a beat
    off the asked wait; waits shorter than two beats (fast test intervals) are left as asked."""
    for asked in (0.5, 1.0, 2.37, 10.0, 59.9):
        now = time.monotonic()
        wait = pipeline.on_the_beat(asked)
        ends = now + wait
        assert abs(ends / pipeline.POLL_BEAT - round(ends / pipeline.POLL_BEAT)) < 0.01
        assert abs(wait - asked) <= pipeline.POLL_BEAT / 2 + 0.01
    assert pipeline.on_the_beat(0.1) == 0.1
    assert pipeline.on_the_beat(-1.0) == 0.0
