"""How a waiting request sleeps: SIGTERM wakes it at once, and cancel reads are spaced out."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from jobs import pipeline, shutdown
from jobs.errors import RequestCanceled
from jobs.shutdown import WorkerStopping
from jobs.store import Record


class CountingRedis:
    """Answers HGET of the cancel flag and counts the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.canceled = False

    def hget(self, key: str, field: str) -> bytes | None:
        self.reads += 1
        return b"1" if self.canceled else None


def context(poll_interval: float) -> SimpleNamespace:
    return SimpleNamespace(
        settings=SimpleNamespace(poll_interval=poll_interval), redis=CountingRedis(), cancel_checks=threading.local()
    )


@pytest.fixture(autouse=True)
def no_stop_flag():
    shutdown.REQUESTED.clear()
    yield
    shutdown.REQUESTED.clear()


def test_sigterm_wakes_a_long_sleep_at_once() -> None:
    ctx, record = context(10.0), Record(request_id="r", image_url="https://cdn.example.com/a.jpg")
    threading.Timer(0.2, shutdown.REQUESTED.set).start()
    started = time.monotonic()
    with pytest.raises(WorkerStopping):
        pipeline.sleep(ctx, record, 60)
    assert time.monotonic() - started < 2


def test_cancel_is_read_at_most_every_three_polls_while_sleeping() -> None:
    ctx, record = context(0.1), Record(request_id="r", image_url="https://cdn.example.com/a.jpg")
    pipeline.check_cancel(ctx, record)  # a step starts with a fresh read
    started = time.monotonic()
    for _ in range(12):  # twelve polls' worth of sleeping: about four reads, one per 0.3 s
        pipeline.sleep(ctx, record, 0.1)
    reads = ctx.redis.reads - 1
    assert 3 <= reads <= (time.monotonic() - started) / 0.3 + 1
    assert reads < 12
    ctx.redis.canceled = True
    with pytest.raises(RequestCanceled):
        pipeline.sleep(ctx, record, 0.7)  # longer than the 0.3 s a read may be stale


def test_a_step_always_reads_the_flag() -> None:
    ctx, record = context(10.0), Record(request_id="r", image_url="https://cdn.example.com/a.jpg")
    pipeline.check_cancel(ctx, record)
    ctx.redis.canceled = True
    with pytest.raises(RequestCanceled):
        pipeline.check_cancel(ctx, record)
