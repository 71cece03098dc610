"""The threaded worker on a real Redis: many requests in one process, few connections, cancels, a hung
call, the one-pipeline heartbeat, and a plain ``rq worker`` that still runs the jobs one at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from rq import Queue, Worker
from rq.job import Job
from rq.registry import StartedJobRegistry

from jobs.worker import REDIS_CONNECTIONS, PipelineWorker
from tests.fakes import Fault
from tests.helpers import python_env, wait_for
from tests.integration.test_pipeline import final_record, one_callback, submit

#: One worker process with many threads, and timings a loaded machine can keep.
THREADED = {"WORKER_THREADS": "50", "POLL_INTERVAL": "0.5", "INITIAL_WAIT_TIME": "0.5", "MAX_CHECK_TIME": "30"}
FAILED = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}


def image(n: int) -> str:
    return f"https://cdn.example.com/images/plane-{n}.jpg"


def started(redis, settings) -> int:
    """Executions in RQ's started registry of the pipeline queue."""
    return StartedJobRegistry(settings.queue_name, connection=redis).count


def test_one_process_runs_many_requests_at_once_on_at_most_ten_connections(
    client, fake_replicate, fake_pika, fake_game, start_process, redis, redis_url, settings
) -> None:
    """40 requests in one process at once: all in RQ's registries, ≤ 10 Redis connections, one callback each."""
    fake_pika.duration = 4
    start_process("worker", **THREADED)
    ids = [f"many-{n}" for n in range(40)]
    for n, request_id in enumerate(ids):
        submit(client, request_id, image(n))

    def all_running() -> bool:
        return started(redis, settings) == len(ids)

    wait_for(all_running, timeout=20, interval=0.1, what="every request running at once")
    workers = Worker.all(connection=redis)
    assert len(workers) == 1
    worker = workers[0]
    assert worker.get_state() == "busy"
    assert redis.hget(worker.key, "threads") == b"50"
    assert len(worker.get_current_executions(refresh=True)) == len(ids)
    connections = [c for c in redis.client_list() if c.get("name") == worker.name]
    assert 2 <= len(connections) <= REDIS_CONNECTIONS, connections

    info = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "rq"), "info", "--url", redis_url, "--raw", settings.queue_name],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f"worker {worker.name}" in info and "busy" in info, info
    assert f"queue {settings.queue_name} 0" in info, info

    for request_id in ids:
        assert final_record(client, request_id, timeout=40)["status"] == "completed"
        assert one_callback(fake_game, request_id)["data"]["status"] == "COMPLETED"
    assert sorted(g["image"] for g in fake_pika.generates) == sorted(image(n) for n in range(len(ids)))
    assert len(fake_replicate.creates) == len(ids)
    assert len([c for c in redis.client_list() if c.get("name") == worker.name]) <= REDIS_CONNECTIONS
    wait_for(lambda: Worker.all(connection=redis)[0].get_state() == "idle", what="the worker idle again")


def test_a_process_takes_only_as_many_requests_as_it_has_threads(
    client, fake_pika, fake_game, start_process, redis, settings
) -> None:
    """With 3 threads and 5 requests, 3 run and 2 stay in the queue for any other process."""
    fake_pika.duration = 2
    start_process("worker", **{**THREADED, "WORKER_THREADS": "3"})
    for n in range(5):
        submit(client, f"few-{n}", image(n))
    wait_for(lambda: started(redis, settings) == 3, timeout=15, what="three requests running")
    time.sleep(0.5)
    assert started(redis, settings) == 3
    assert len(Queue(settings.queue_name, connection=redis)) == 2
    for n in range(5):
        assert final_record(client, f"few-{n}", timeout=40)["status"] == "completed"
    assert len(fake_game.callbacks) == 5


def test_cancel_with_many_in_flight_frees_every_thread_within_the_bound(
    client, fake_pika, fake_game, start_process, redis, settings
) -> None:
    """20 polling requests canceled: one FAILED callback each, and their threads stop within 3 polls."""
    fake_pika.outcome = "never"
    start_process("worker", **THREADED)
    ids = [f"cancel-{n}" for n in range(20)]
    for n, request_id in enumerate(ids):
        submit(client, request_id, image(n))
    wait_for(lambda: len(fake_pika.generates) == len(ids), timeout=20, what="every request submitted to Pika")
    wait_for(lambda: started(redis, settings) == len(ids), timeout=10, what="every request polling")
    for request_id in ids:
        assert client.delete(f"/api/v1/i2v/{request_id}").status_code == 202
    canceled_at = time.monotonic()
    # The documented bound: a waiting request reads the cancel flag at least every 3 polls (1.5 s here).
    wait_for(lambda: started(redis, settings) == 0, timeout=10, what="every thread stopped")
    assert time.monotonic() - canceled_at < 3 * 0.5 + 2.5
    polls = sum(fake_pika.polls.values())
    time.sleep(1.5)
    assert sum(fake_pika.polls.values()) <= polls + 1
    for request_id in ids:
        assert one_callback(fake_game, request_id) == FAILED
        assert final_record(client, request_id)["status"] == "canceled"


def test_a_hung_provider_call_delays_no_other_request(client, fake_pika, fake_game, start_process) -> None:
    """One request's poll hangs 5 s; five requests sent after it finish meanwhile, and it finishes after."""
    fake_pika.duration = 0.5
    start_process("worker", **THREADED, HTTP_READ_TIMEOUT="10")
    fake_pika.add_fault("job", Fault.slow(5))
    submit(client, "hung", image(0))
    wait_for(lambda: fake_pika.requests_for("job"), timeout=15, what="the first (hung) poll")
    hung_since = time.monotonic()
    for n in range(1, 6):
        submit(client, f"free-{n}", image(n))
    for n in range(1, 6):
        assert final_record(client, f"free-{n}", timeout=20)["status"] == "completed"
    assert time.monotonic() - hung_since < 5
    assert client.get("/api/v1/i2v/hung").get_json()["status"] == "processing"
    assert final_record(client, "hung", timeout=20)["status"] == "completed"
    assert one_callback(fake_game, "hung")["data"]["status"] == "COMPLETED"


def test_plain_rq_worker_still_runs_a_job(client, fake_game, service_env, redis_url, settings) -> None:
    """RQ's own forking worker, one job at a time, runs the pipeline job to one callback."""
    submit(client, "plain")
    rq = os.path.join(os.path.dirname(sys.executable), "rq")
    done = subprocess.run(
        [rq, "worker", "--burst", "--url", redis_url, settings.queue_name],
        env=python_env(service_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert final_record(client, "plain")["status"] == "completed"
    assert one_callback(fake_game, "plain")["data"]["status"] == "COMPLETED"


@pytest.fixture
def pipeline_worker(service_env, monkeypatch, redis, settings) -> PipelineWorker:
    """A PipelineWorker built in this process from the test environment (not started)."""
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    worker = PipelineWorker([settings.queue_name])
    worker.register_birth()
    yield worker
    worker.register_death()


def test_one_heartbeat_keeps_every_running_execution_alive_in_one_round_trip(
    pipeline_worker: PipelineWorker, redis, settings
) -> None:
    """Five running executions: one beat is one pipeline, and refreshes every execution and job."""
    worker = pipeline_worker
    queue = Queue(settings.queue_name, connection=redis)
    jobs = [queue.enqueue("jobs.pipeline.run_request", f"i2v:req:{n}", job_timeout=600) for n in range(5)]
    for job in jobs:
        execution = worker.prepare_execution(job)
        worker._beating[execution.id] = (job, execution)
    registry = StartedJobRegistry(settings.queue_name, connection=redis)
    before = {member: score for member, score in redis.zrange(registry.key, 0, -1, withscores=True)}
    assert len(before) == len(jobs)
    time.sleep(1.1)

    pipelines = []
    make_pipeline = worker.connection.pipeline

    def counted(*args, **kwargs):
        pipe = make_pipeline(*args, **kwargs)
        pipelines.append(pipe)
        return pipe

    worker.connection.pipeline = counted
    worker.beat()
    assert len(pipelines) == 1
    after = {member: score for member, score in redis.zrange(registry.key, 0, -1, withscores=True)}
    assert set(after) == set(before)
    assert all(after[member] > before[member] for member in before)
    for job in jobs:
        assert Job.fetch(job.id, connection=redis).last_heartbeat is not None
        assert redis.hget(job.key, "last_heartbeat") is not None
