"""End to end: a threaded worker process holding many requests is SIGKILLed or SIGTERMed, and every request
resumes on a live worker, paid once and called back once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from rq import Queue
from rq.registry import StartedJobRegistry

from jobs.identity import RequestIdentity
from tests.api import Api
from tests.fakes import Fakes, Fault
from tests.helpers import ServiceProcess, wait_for

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


def put_many_in_flight(api: Api, fakes: Fakes, start_process: StartProcess, redis, settings) -> ServiceProcess:
    """Start one worker process and get IN_FLIGHT requests polling Pika in it."""
    worker = start_process("worker", **THREADED)
    for n in range(IN_FLIGHT):
        api.submit(f"flight-{n}", f"https://cdn.example.com/images/plane-{n}.jpg", expect=202)
    wait_for(lambda: len(fakes.pika.generates) == IN_FLIGHT, timeout=30, message="every request submitted to Pika")
    registry = StartedJobRegistry(settings.queue_name, connection=redis)
    wait_for(lambda: registry.count == IN_FLIGHT, timeout=10, message="every request running in the one process")
    return worker


def whereabouts(redis, settings) -> dict[str, list[str]]:
    """The requests grouped by where their job is (RQ's lists and registries) and by job and record status.

    For a failed assertion's message: it says at once where a job that is not in the queue went
    ("nowhere" when in no list or registry, "queue+queue" when handed back twice).
    """
    queue = Queue(settings.queue_name, connection=redis)
    places = {
        "queue": queue.get_job_ids(),
        "intermediate": queue.intermediate_queue.get_job_ids(),
        "started": queue.started_job_registry.get_job_ids(cleanup=False),
        "scheduled": queue.scheduled_job_registry.get_job_ids(cleanup=False),
        "deferred": queue.deferred_job_registry.get_job_ids(cleanup=False),
        "failed": queue.failed_job_registry.get_job_ids(cleanup=False),
        "finished": queue.finished_job_registry.get_job_ids(cleanup=False),
        "canceled": queue.canceled_job_registry.get_job_ids(cleanup=False),
    }
    found: dict[str, list[str]] = {}
    for n in range(IN_FLIGHT):
        identity = RequestIdentity("", f"flight-{n}")
        where = [place for place, ids in places.items() for job_id in ids if job_id == identity.job_id]
        job_status = redis.hget(f"rq:job:{identity.job_id}", "status")
        record_status = redis.hget(identity.record_key, "status")
        label = f"{'+'.join(where) or 'nowhere'} (job {job_status!r}, record {record_status!r})"
        found.setdefault(label, []).append(identity.request_id)
    return found


def check_each_paid_and_called_back_once(api: Api, fakes: Fakes) -> None:
    """Every request completed, with one Replicate create, one Pika submission and one callback."""
    for n in range(IN_FLIGHT):
        assert api.settled(f"flight-{n}", timeout=60)["status"] == "completed"
    time.sleep(0.5)  # room for a duplicate callback to show
    for n in range(IN_FLIGHT):
        assert api.one_callback(f"flight-{n}")["data"]["status"] == "COMPLETED"
    assert len(fakes.pika.generates) == IN_FLIGHT
    assert len({g["image"] for g in fakes.pika.generates}) == IN_FLIGHT
    assert len(fakes.replicate.creates) == IN_FLIGHT


def test_sigkill_of_a_process_holding_many_requests_resumes_them_all(
    api: Api, fakes: Fakes, start_process: StartProcess, redis, settings
) -> None:
    """SIGKILL of a process with 50 requests in flight: all resume elsewhere, paid once, called back once."""
    fakes.pika.duration = 12
    start_process("scheduler", **THREADED)
    first = put_many_in_flight(api, fakes, start_process, redis, settings)
    first.kill()
    start_process("worker", **THREADED)
    # The janitor hands the executions back once their heartbeat lapses (1 s + 15 s here).
    check_each_paid_and_called_back_once(api, fakes)


def test_sigterm_hands_every_request_back_within_ten_seconds(
    api: Api, fakes: Fakes, start_process: StartProcess, redis, settings
) -> None:
    """SIGTERM of a process with 50 requests in flight: all back in the queue and the process gone within 10 s.

    One thread is inside a poll that takes 3 s: it hands back when the call returns, the others at once.
    """
    fakes.pika.duration = 5
    first = put_many_in_flight(api, fakes, start_process, redis, settings)
    polls = len(fakes.pika.requests_for("job"))
    fakes.pika.add_fault("job", Fault.slow(3))
    wait_for(lambda: len(fakes.pika.requests_for("job")) > polls + 1, message="the slow poll under way")
    slow_poll_returns = fakes.pika.requests_for("job")[polls].at + 3  # the first poll after the fault
    asked = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.proc is not None
    first.proc.wait(timeout=10)
    assert time.monotonic() - asked < 10
    assert time.time() >= slow_poll_returns, "the process left before the call in progress returned"
    assert StartedJobRegistry(settings.queue_name, connection=redis).count == 0
    # The thread inside the slow poll carries on with what it returns: a video ready by then is
    # finished and called back instead of handed back.
    finished_meanwhile = len(fakes.game.callbacks)
    assert finished_meanwhile <= 1
    queued = len(Queue(settings.queue_name, connection=redis))
    assert queued == IN_FLIGHT - finished_meanwhile, whereabouts(redis, settings)
    assert "handed the job back to the queue" in first.output
    start_process("worker", **THREADED)
    check_each_paid_and_called_back_once(api, fakes)
