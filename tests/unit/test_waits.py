"""How requests sleep: in the process's waiting room, which does their Redis work in batches.

A SIGTERM, a cancel or the job's deadline ends a sleep early; a sleeping request makes no Redis call
of its own; its progress reaches the record within a second, never over a record that has ended.
"""

from __future__ import annotations

import random
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
    first = record("first")
    redis.hset(first.key, mapping={"status": Status.PROCESSING, "version": 1})
    ctx.waiting.note_progress(first.key, 5)  # a quiet room writes at once ...
    wait_for(lambda: writes, 5, message="the first progress to be written")
    written = time.monotonic()
    for rec in live:  # ... and then at most once a second, everything noted meanwhile in one round trip
        ctx.waiting.note_progress(rec.key, 10)
        ctx.waiting.note_progress(rec.key, 42)  # only the last value is written
    ctx.waiting.note_progress(ended.key, 42)
    wait_for(lambda: len(writes) == 2, 5, message="the batch to be written")
    assert time.monotonic() - written >= 0.9
    time.sleep(0.5)
    assert writes == [1, 21]
    for rec in live:
        assert redis.hmget(rec.key, "provider_progress", "version") == [b"42", b"2"]
        assert redis.ttl(rec.key) > 0
    assert redis.hmget(ended.key, "provider_progress", "version") == [b"100", b"1"]


def test_the_rooms_thread_runs_only_while_someone_sleeps(redis: Redis) -> None:
    """It starts with the first sleeper and ends at its next turn once nobody sleeps."""
    ctx = waiting_context(redis, 0.1)  # a turn every 0.3 s
    assert ctx.waiting._thread is None
    sleeper = threading.Thread(target=pipeline.sleep, args=(ctx, record(), 0.5))
    sleeper.start()
    wait_for(lambda: ctx.waiting._thread is not None, 5, message="the room's thread to start")
    thread = ctx.waiting._thread
    sleeper.join()
    thread.join(5)
    assert not thread.is_alive() and ctx.waiting._thread is None


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_polls_are_never_early_at_most_a_beat_late_on_the_beat_and_do_not_drift() -> None:
    """Slot k is first + k x every: a video ready at a slot is seen at that slot (the documented
    schedule), polls share the process's beat, and however long each poll takes the average stays."""
    rng = random.Random(7)
    beat = pipeline.POLL_BEAT
    clock = FakeClock(990.0)
    polls = pipeline.PollClock(1000.1, 10.0, clock)
    times = []
    for slot in range(100):
        clock.now += polls.wait()
        nominal = 1000.1 + slot * 10.0
        assert nominal - 1e-6 <= clock.now < nominal + beat
        assert abs(clock.now / beat - round(clock.now / beat)) < 1e-6
        times.append(clock.now)
        clock.now += rng.uniform(0.0, 2.0)  # the poll itself
    assert (times[-1] - times[0]) / 99 == pytest.approx(10.0, abs=beat / 99)


def test_slots_missed_during_a_slow_poll_are_skipped_not_made_up() -> None:
    clock = FakeClock(1000.0)
    polls = pipeline.PollClock(1000.0, 10.0, clock)
    clock.now += polls.wait()
    clock.now += 35.0  # a poll that ran into its timeouts
    assert 0 < polls.wait() <= 5.0  # the slot at +40 s, not the three that passed
    clock.now = 1040.0
    assert polls.wait() == pytest.approx(10.0)


def test_a_skipped_slot_is_polled_at_once_and_short_intervals_keep_exact_slots() -> None:
    clock = FakeClock(500.03)
    polls = pipeline.PollClock(500.03, 0.3, clock)  # shorter than two beats: no beat
    polls.skip()  # slot 0 is polled now, without a wait
    assert polls.wait() == pytest.approx(0.3)


def test_the_room_sleeps_until_there_is_work(redis: Redis) -> None:
    """No turn a second for nothing (a one-request process would pay it all the time); progress
    noted in a quiet room is written at once."""
    ctx = waiting_context(redis, 10.0)  # cancels are read every 30 s
    turns: list[float] = []
    write = ctx.waiting._write_progress

    def counted() -> None:
        turns.append(time.monotonic())
        write()

    ctx.waiting._write_progress = counted
    rec = record()
    redis.hset(rec.key, mapping={"status": Status.PROCESSING, "version": 1})
    sleeper = threading.Thread(target=pipeline.sleep, args=(ctx, rec, 2.5))
    sleeper.start()
    time.sleep(2.2)
    assert turns == []
    noted = time.monotonic()
    ctx.waiting.note_progress(rec.key, 7)
    wait_for(lambda: redis.hget(rec.key, "provider_progress") == b"7", 5, message="the progress to be written")
    assert turns and turns[0] - noted < 0.5
    sleeper.join()


def test_a_cancel_read_does_not_hold_back_the_next_progress_write(redis: Redis) -> None:
    """Only a write starts the one-second wait between writes: progress that comes right after a
    cancel read in a quiet room is written at once."""
    ctx = waiting_context(redis, 0.1)  # cancels are read every 0.3 s
    rec = record()
    redis.hset(rec.key, mapping={"status": Status.PROCESSING, "version": 1})
    read = ctx.waiting._read_cancels
    noted: list[float] = []

    def read_then_note() -> None:
        read()
        if not noted:
            noted.append(time.monotonic())
            ctx.waiting.note_progress(rec.key, 9)

    ctx.waiting._read_cancels = read_then_note
    sleeper = threading.Thread(target=pipeline.sleep, args=(ctx, rec, 1.5))
    sleeper.start()
    wait_for(lambda: redis.hget(rec.key, "provider_progress") == b"9", 5, message="the progress to be written")
    assert time.monotonic() - noted[0] < 0.5
    sleeper.join()
