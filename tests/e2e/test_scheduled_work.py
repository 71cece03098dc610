"""Scheduled work keeps moving when a process dies, with the scheduler, heartbeat and janitor defaults.

Real processes: the Procfile's ``worker`` (``rq worker-pool`` of PipelineWorkers) and ``scheduler``
(the janitor) on a real Redis. The dead process is not restarted: a platform may wait minutes before
it restarts a crashed one.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.job import Job

from config import settings_from
from i2v_app import create_app
from jobs.identity import RequestIdentity
from jobs.store import PIPELINE_RETRIES
from tests.api import Api
from tests.fakes import Fault
from tests.helpers import OwnRedis, ServiceProcess, completed_callback, descendants, wait_for

pytestmark = pytest.mark.e2e

LOCK_KEY = "rq:scheduler-lock:i2v"
#: The settings under test stay at their defaults (empty means "the default").
DEFAULTS = {"JANITOR_INTERVAL": "", "JANITOR_GRACE": "", "WORKER_HEARTBEAT_INTERVAL": "", "CALLBACK_RETRY_DELAYS": ""}
#: Issue 10: a callback retry goes out within this many seconds of its due time.
RETRY_LATENESS = 60.0
#: Issue 10: a request whose worker died resumes within this many seconds of the kill.
RESUME_WITHIN = 120.0


def lock_holder(redis: Redis) -> int | None:
    """The pid of the process holding the scheduler lock (its token is ``i2v:<host>:<pid>:<nonce>``)."""
    token = redis.get(LOCK_KEY)
    if not token or not token.startswith(b"i2v:"):
        return None
    return int(token.split(b":")[2])


def pool_of(pid: int, pools: list[ServiceProcess]) -> ServiceProcess | None:
    """The Procfile process that ``pid`` is, or descends from."""
    for pool in pools:
        assert pool.proc is not None
        if pid == pool.proc.pid or pid in descendants(pool.proc.pid):
            return pool
    return None


def first_attempt_failed(api: Api, request_id: str) -> float:
    """Submit a request whose first callback is refused; return the Unix time its retry is due."""
    assert api.game is not None
    api.game.add_fault("callback", Fault.error(503))
    api.submit(request_id, expect=202)
    record = wait_for(
        lambda: (body := api.record(request_id))["callback"]["next_attempt_at"] and body,
        timeout=30,
        interval=0.1,
        message="the first callback attempt to fail",
    )
    assert record["callback"]["attempts"] == 1, record
    return datetime.fromisoformat(record["callback"]["next_attempt_at"].replace("Z", "+00:00")).timestamp()


def assert_retried_in_time(api: Api, request_id: str, due: float) -> None:
    """The retry was sent once, within ``RETRY_LATENESS`` of ``due``, and was the last attempt."""
    fake_game = api.game
    assert fake_game is not None
    attempts = wait_for(
        lambda: len(fake_game.requests_for("callback")) >= 2 and fake_game.requests_for("callback"),
        timeout=due - time.time() + RETRY_LATENESS + 10,
        interval=0.2,
        message="the callback retry",
    )
    assert attempts[1].at - due < RETRY_LATENESS, f"sent {attempts[1].at - due:.0f} s after its due time"
    record = wait_for(
        lambda: (body := api.record(request_id))["callback"]["status"] == "delivered" and body,
        timeout=10,
        message="the delivery recorded",
    )
    time.sleep(1.5)  # a second mover would move (and send) it again within about a second
    assert len(fake_game.requests_for("callback")) == 2
    assert record["callback"]["attempts"] == 2
    assert len(fake_game.callbacks_for(request_id)) == 1


def test_callback_retry_moves_when_the_lock_holding_janitor_is_killed(api, fakes, start_process, redis) -> None:
    """SIGKILL of the scheduler process that holds the lock: a worker's stand-in takes over in time."""
    janitor = start_process("scheduler", **DEFAULTS)
    assert janitor.proc is not None
    # The worker comes second: a stand-in that starts first may take the free lock itself.
    wait_for(lambda: lock_holder(redis) == janitor.proc.pid, timeout=20, message="the janitor to take the lock")
    pool = start_process("worker", **DEFAULTS)

    due = first_attempt_failed(api, "sched-janitor")
    janitor.kill()
    assert_retried_in_time(api, "sched-janitor", due)
    holder = lock_holder(redis)
    assert holder is not None and pool_of(holder, [pool]) is pool, "the worker's stand-in holds the lock now"


def test_callback_retry_moves_when_the_lock_holding_worker_is_killed(api, fakes, start_process, redis) -> None:
    """No janitor runs: SIGKILL of the whole worker whose process holds the lock; the other worker takes over."""
    pools = [start_process("worker", **DEFAULTS), start_process("worker", **DEFAULTS)]
    wait_for(lambda: lock_holder(redis), timeout=20, message="a worker to take the lock")
    due = first_attempt_failed(api, "sched-worker")

    holding = pool_of(lock_holder(redis) or 0, pools)
    assert holding is not None, "the lock holder is one of the worker processes"
    holding.kill()
    survivor = next(pool for pool in pools if pool is not holding)
    assert_retried_in_time(api, "sched-worker", due)
    holder = lock_holder(redis)
    assert holder is not None and pool_of(holder, [survivor]) is survivor


def test_callback_retry_moves_after_redis_restarts_from_its_aof(
    fakes, start_process, service_env: dict[str, str], tmp_path: Path
) -> None:
    """Redis crashes (SIGKILL) and comes back from its append-only file: the retry still goes out in time."""
    server = OwnRedis(tmp_path / "redis")
    server.start()
    processes: list[ServiceProcess] = []
    try:
        env = {**DEFAULTS, "REDIS_URL": server.url}
        api = Api(create_app(settings_from({**service_env, **env})).test_client(), fakes.game)
        processes += [start_process("scheduler", **env), start_process("worker", **env)]
        due = first_attempt_failed(api, "sched-aof")
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(timeout=10)
        server.start()
        wait_for(
            lambda: api.status("sched-aof").status_code == 200,
            timeout=20,
            message="Redis back with the record",
        )
        assert_retried_in_time(api, "sched-aof", due)
    finally:
        for process in processes:
            process.stop()  # while Redis still answers: a worker waits for Redis before it exits
        server.stop()


@pytest.mark.timeout(RESUME_WITHIN + 120)
def test_request_of_a_killed_pool_process_resumes_within_two_minutes(api, fakes, start_process, redis) -> None:
    """SIGKILL of the pool process running a request (an OOM kill): another one resumes it in time.

    The killed process is shown to be the one that held the request: RQ names it as the job's worker.
    """
    fakes.pika.duration = 20
    slow = {**DEFAULTS, "MAX_CHECK_TIME": "300"}
    start_process("scheduler", **slow)
    pool = start_process("worker", **slow, WORKER_PROCESSES="2")
    api.submit("sched-oom", expect=202)
    api.provider_job("sched-oom", timeout=30)

    job = Job.fetch(RequestIdentity("", "sched-oom").job_id, connection=redis)
    pid = int(redis.hget(f"rq:worker:{job.worker_name}", "pid") or 0)
    assert pool.proc is not None and pid in descendants(pool.proc.pid), "the job's worker is a process of the pool"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    def resumed() -> Job | None:
        again = Job.fetch(job.id, connection=redis)
        return again if again.worker_name not in (None, job.worker_name) else None

    again = wait_for(resumed, timeout=RESUME_WITHIN, interval=0.5, message="another process to resume the request")
    assert time.time() - killed_at < RESUME_WITHIN
    assert again.retries_left == PIPELINE_RETRIES - 1, "the crash counted as one failure"

    def delivered() -> dict[str, Any] | None:
        body = api.record("sched-oom")
        return body if body["callback"]["status"] == "delivered" else None

    record = wait_for(
        delivered, timeout=fakes.pika.duration + 30, interval=0.5, message="the resumed request to finish"
    )
    assert record["status"] == "completed"
    assert len(fakes.game.callbacks_for("sched-oom")) == 1
    assert fakes.game.callbacks_for("sched-oom")[0].json == completed_callback(record["video_url"], "Plane fly")
    assert len(fakes.pika.generates) == 1 and len(fakes.replicate.creates) == 1
