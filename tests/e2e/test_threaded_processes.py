"""End to end: a threaded worker process holding many requests is SIGKILLed or SIGTERMed, and every request
resumes on a live worker, paid once and called back once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry

from tests.fakes import Fault
from tests.helpers import ServiceProcess, wait_for
from tests.integration.test_pipeline import final_record, one_callback, submit

pytestmark = pytest.mark.e2e

#: Many threads in one process; polls every 0.5 s; the video outlives the first worker.
THREADED = {
    "WORKER_THREADS": "60",
    "POLL_INTERVAL": "0.5",
    "INITIAL_WAIT_TIME": "0.5",
    "MAX_CHECK_TIME": "90",
    "HTTP_READ_TIMEOUT": "5",
}
IN_FLIGHT = 50

StartProcess = Callable[..., ServiceProcess]


def put_many_in_flight(client, fake_pika, start_process: StartProcess, redis, settings) -> ServiceProcess:
    """Start one worker process and get IN_FLIGHT requests polling Pika in it."""
    worker = start_process("worker", **THREADED)
    for n in range(IN_FLIGHT):
        submit(client, f"flight-{n}", f"https://cdn.example.com/images/plane-{n}.jpg")
    wait_for(lambda: len(fake_pika.generates) == IN_FLIGHT, timeout=30, what="every request submitted to Pika")
    registry = StartedJobRegistry(settings.queue_name, connection=redis)
    wait_for(lambda: registry.count == IN_FLIGHT, timeout=10, what="every request running in the one process")
    return worker


def check_each_paid_and_called_back_once(client, fake_replicate, fake_pika, fake_game) -> None:
    """Every request completed, with one Replicate create, one Pika submission and one callback."""
    for n in range(IN_FLIGHT):
        assert final_record(client, f"flight-{n}", timeout=60)["status"] == "completed"
    time.sleep(0.5)  # room for a duplicate callback to show
    for n in range(IN_FLIGHT):
        assert one_callback(fake_game, f"flight-{n}")["data"]["status"] == "COMPLETED"
    assert len(fake_pika.generates) == IN_FLIGHT
    assert len({g["image"] for g in fake_pika.generates}) == IN_FLIGHT
    assert len(fake_replicate.creates) == IN_FLIGHT


def test_sigkill_of_a_process_holding_many_requests_resumes_them_all(
    client, fake_replicate, fake_pika, fake_game, start_process: StartProcess, redis, settings
) -> None:
    """SIGKILL of a process with 50 requests in flight: all resume elsewhere, paid once, called back once."""
    fake_pika.duration = 12
    start_process("scheduler", **THREADED)
    first = put_many_in_flight(client, fake_pika, start_process, redis, settings)
    first.kill()
    start_process("worker", **THREADED)
    # The janitor hands the executions back once their heartbeat lapses (1 s + 15 s here).
    check_each_paid_and_called_back_once(client, fake_replicate, fake_pika, fake_game)


def test_sigterm_hands_every_request_back_within_ten_seconds(
    client, fake_replicate, fake_pika, fake_game, start_process: StartProcess, redis, settings
) -> None:
    """SIGTERM of a process with 50 requests in flight: all back in the queue and the process gone within 10 s.

    One thread is inside a poll that takes 3 s: it hands back when the call returns, the others at once.
    """
    fake_pika.duration = 5
    first = put_many_in_flight(client, fake_pika, start_process, redis, settings)
    polls = len(fake_pika.requests_for("job"))
    fake_pika.add_fault("job", Fault.slow(3))
    wait_for(lambda: len(fake_pika.requests_for("job")) > polls + 1, what="the slow poll under way")
    slow_poll_returns = fake_pika.requests_for("job")[polls].at + 3  # the first poll after the fault
    asked = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.proc is not None
    first.proc.wait(timeout=10)
    assert time.monotonic() - asked < 10
    assert time.time() >= slow_poll_returns, "the process left before the call in progress returned"
    assert StartedJobRegistry(settings.queue_name, connection=redis).count == 0
    # The thread inside the slow poll carries on with what it returns: a video ready by then is
    # finished and called back instead of handed back.
    finished_meanwhile = len(fake_game.callbacks)
    assert finished_meanwhile <= 1
    assert len(Queue(settings.queue_name, connection=redis)) == IN_FLIGHT - finished_meanwhile
    assert "handed the job back to the queue" in first.output
    start_process("worker", **THREADED)
    check_each_paid_and_called_back_once(client, fake_replicate, fake_pika, fake_game)
