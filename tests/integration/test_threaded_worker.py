"""The threaded worker on a real Redis: many requests in one process, few connections, cancels, a hung
call, the one-pipeline heartbeat, a stop while waiting for a job, and a plain ``rq worker`` that still runs
the jobs one at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.registry import StartedJobRegistry

import config
from jobs import shutdown
from jobs.janitor import StrandedJobs
from jobs.worker import REDIS_CONNECTIONS, PipelineWorker
from tests.fakes import Fault
from tests.helpers import python_env, wait_for

#: One worker process with many threads, and timings a loaded machine can keep.
THREADED = {"WORKER_THREADS": "50", "POLL_INTERVAL": "0.5", "INITIAL_WAIT_TIME": "0.5", "MAX_CHECK_TIME": "30"}
FAILED = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}


def image(n: int) -> str:
    return f"https://cdn.example.com/images/plane-{n}.jpg"


def started(redis, settings) -> int:
    """Executions in RQ's started registry of the pipeline queue."""
    return StartedJobRegistry(settings.queue_name, connection=redis).count


def test_one_process_runs_many_requests_at_once_on_at_most_ten_connections(
    api, fakes, start_process, redis, redis_url, settings
) -> None:
    """40 requests in one process at once: all in RQ's registries, ≤ 10 Redis connections, one callback each."""
    fakes.pika.duration = 4
    start_process("worker", **THREADED)
    ids = [f"many-{n}" for n in range(40)]
    for n, request_id in enumerate(ids):
        api.submit(request_id, image(n), expect=202)

    def all_running() -> bool:
        return started(redis, settings) == len(ids)

    wait_for(all_running, timeout=20, interval=0.1, message="every request running at once")
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
        assert api.settled(request_id, timeout=40)["status"] == "completed"
        assert api.one_callback(request_id)["data"]["status"] == "COMPLETED"
    assert sorted(g["image"] for g in fakes.pika.generates) == sorted(image(n) for n in range(len(ids)))
    assert len(fakes.replicate.creates) == len(ids)
    assert len([c for c in redis.client_list() if c.get("name") == worker.name]) <= REDIS_CONNECTIONS
    wait_for(lambda: Worker.all(connection=redis)[0].get_state() == "idle", message="the worker idle again")


def test_a_process_takes_only_as_many_requests_as_it_has_threads(api, fakes, start_process, redis, settings) -> None:
    """With 3 threads and 5 requests, 3 run and 2 stay in the queue for any other process."""
    fakes.pika.duration = 2
    start_process("worker", **{**THREADED, "WORKER_THREADS": "3"})
    for n in range(5):
        api.submit(f"few-{n}", image(n), expect=202)
    wait_for(lambda: started(redis, settings) == 3, timeout=15, message="three requests running")
    time.sleep(0.5)
    assert started(redis, settings) == 3
    assert len(Queue(settings.queue_name, connection=redis)) == 2
    for n in range(5):
        assert api.settled(f"few-{n}", timeout=40)["status"] == "completed"
    assert len(fakes.game.callbacks) == 5


def test_cancel_with_many_in_flight_frees_every_thread_within_the_bound(
    api, fakes, start_process, redis, settings
) -> None:
    """20 polling requests canceled: one FAILED callback each, and their threads stop within 3 polls."""
    fakes.pika.outcome = "never"
    start_process("worker", **THREADED)
    ids = [f"cancel-{n}" for n in range(20)]
    for n, request_id in enumerate(ids):
        api.submit(request_id, image(n), expect=202)
    wait_for(lambda: len(fakes.pika.generates) == len(ids), timeout=20, message="every request submitted to Pika")
    wait_for(lambda: started(redis, settings) == len(ids), timeout=10, message="every request polling")
    for request_id in ids:
        assert api.cancel(request_id).status_code == 202
    canceled_at = time.monotonic()
    # The documented bound: a waiting request reads the cancel flag at least every 3 polls (1.5 s here).
    wait_for(lambda: started(redis, settings) == 0, timeout=10, message="every thread stopped")
    assert time.monotonic() - canceled_at < 3 * 0.5 + 2.5
    polls = sum(fakes.pika.polls.values())
    time.sleep(1.5)
    assert sum(fakes.pika.polls.values()) <= polls + 1
    for request_id in ids:
        assert api.one_callback(request_id) == FAILED
        assert api.settled(request_id)["status"] == "canceled"


def test_a_hung_provider_call_delays_no_other_request(api, fakes, start_process) -> None:
    """One request's poll hangs 5 s; five requests sent after it finish meanwhile, and it finishes after."""
    fakes.pika.duration = 0.5
    start_process("worker", **THREADED, HTTP_READ_TIMEOUT="10")
    fakes.pika.add_fault("job", Fault.slow(5))
    api.submit("hung", image(0), expect=202)
    wait_for(lambda: fakes.pika.requests_for("job"), timeout=15, message="the first (hung) poll")
    hung_since = time.monotonic()
    for n in range(1, 6):
        api.submit(f"free-{n}", image(n), expect=202)
    for n in range(1, 6):
        assert api.settled(f"free-{n}", timeout=20)["status"] == "completed"
    assert time.monotonic() - hung_since < 5
    assert api.record("hung")["status"] == "processing"
    assert api.settled("hung", timeout=20)["status"] == "completed"
    assert api.one_callback("hung")["data"]["status"] == "COMPLETED"


def test_plain_rq_worker_still_runs_a_job(api, service_env, redis_url, settings) -> None:
    """RQ's own forking worker, one job at a time, runs the pipeline job to one callback."""
    api.submit("plain", expect=202)
    rq = os.path.join(os.path.dirname(sys.executable), "rq")
    done = subprocess.run(
        [rq, "worker", "--burst", "--url", redis_url, settings.queue_name],
        env=python_env(service_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert api.settled("plain")["status"] == "completed"
    assert api.one_callback("plain")["data"]["status"] == "COMPLETED"


@pytest.fixture
def pipeline_worker(service_env, monkeypatch, redis, settings) -> PipelineWorker:
    """A PipelineWorker built in this process from the test environment (not started)."""
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    worker = PipelineWorker([settings.queue_name])
    worker.register_birth()
    yield worker
    worker.register_death()


def beating(worker: PipelineWorker, redis, settings, count: int) -> list[tuple[Job, Execution]]:
    """``count`` jobs enqueued and started on ``worker`` as its main loop does, in its heartbeat's list."""
    queue = Queue(settings.queue_name, connection=redis)
    started = []
    for n in range(count):
        job = queue.enqueue("jobs.pipeline.run_request", f"i2v:req:{n}", job_timeout=600)
        execution = worker.prepare_execution(job)
        worker._beating[execution.id] = (job, execution)
        started.append((job, execution))
    return started


def test_one_heartbeat_keeps_every_running_execution_alive_in_one_round_trip(
    pipeline_worker: PipelineWorker, redis, settings
) -> None:
    """Five running executions: one beat is one pipeline, and refreshes every execution and job."""
    worker = pipeline_worker
    jobs = [job for job, _ in beating(worker, redis, settings, 5)]
    registry = StartedJobRegistry(settings.queue_name, connection=redis)
    before = {member: score for member, score in redis.zrange(registry.key, 0, -1, withscores=True)}
    assert len(before) == len(jobs)
    for _, execution in worker._beating.values():
        redis.expire(execution.key, 5)  # about to expire: the beat gives it a heartbeat's TTL again
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
    for execution_id, (job, execution) in worker._beating.items():
        assert redis.hget(execution.key, "last_heartbeat") is not None and redis.ttl(execution.key) > 5
        assert ExecutionRegistry(job.id, connection=redis).get_execution_ids() == [execution_id]


def test_a_beat_brings_back_no_job_or_execution_that_ended_meanwhile(
    pipeline_worker: PipelineWorker, redis, settings
) -> None:
    """As RQ's own beat: a job deleted, or an execution cleaned up, while the beat was being written stays gone."""
    worker = pipeline_worker
    jobs, executions = zip(*beating(worker, redis, settings, 2), strict=True)
    registry = StartedJobRegistry(settings.queue_name, connection=redis)
    redis.delete(jobs[0].key)
    redis.delete(executions[1].key)
    registry.remove_execution(executions[1], pipeline=redis)
    ExecutionRegistry(jobs[1].id, connection=redis).remove(executions[1], pipeline=redis)
    worker.beat()
    assert not redis.exists(jobs[0].key)
    assert not redis.exists(executions[1].key)
    assert registry.get_job_ids() == [jobs[0].id]
    assert ExecutionRegistry(jobs[1].id, connection=redis).get_execution_ids() == []


def work_here(worker: PipelineWorker, alongside: Callable[[], None] | None = None, *, burst: bool = False) -> None:
    """Run ``worker`` in this (the main) thread, as in a worker process, with ``alongside`` in a thread
    of its own; then give the test process its signal handlers and stop flag back."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    helper = threading.Thread(target=alongside, daemon=True) if alongside else None
    if helper:
        helper.start()
    try:
        worker.work(burst=burst, with_scheduler=False)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        shutdown.REQUESTED.clear()
    if helper:
        helper.join(timeout=5)


def hold_until_stopped() -> None:
    """A job that waits, as a waiting request does, until its worker stops; then it hands back."""
    shutdown.REQUESTED.wait(30)
    shutdown.check()


@pytest.mark.timeout(60)
def test_a_stop_while_the_loop_waits_for_a_job_hands_back_to_the_queue(
    service_env, monkeypatch, redis, settings
) -> None:
    """SIGTERM while the loop waits in the queue's blocking pop and is slow to leave it: the running job is
    handed back to the queue, not taken by that pop into RQ's intermediate list (a job no worker runs)."""
    assert threading.current_thread() is threading.main_thread()  # signal handlers, as in a worker process
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    # A loaded machine: the main thread takes a while to get from the signal to the end of its pop.
    monkeypatch.setattr(PipelineWorker, "handle_warm_shutdown_request", lambda self: time.sleep(1))
    queue = Queue(settings.queue_name, connection=redis)
    job = queue.enqueue(f"{__name__}.hold_until_stopped", job_timeout=120)
    worker = PipelineWorker([settings.queue_name])

    def stop_while_waiting() -> None:
        wait_for(lambda: started(redis, settings) == 1, timeout=20, message="the job running")
        wait_for(
            lambda: any(c.get("cmd") == "blmove" for c in redis.client_list()),
            timeout=20,
            message="the loop waiting for the next job",
        )
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    work_here(worker, stop_while_waiting)
    assert queue.get_job_ids() == [job.id]
    assert queue.intermediate_queue.get_job_ids() == []
    assert started(redis, settings) == 0
    assert Job.fetch(job.id, connection=redis).get_status() == "queued"


@pytest.mark.timeout(60)
def test_a_stop_while_every_thread_is_busy_ends_the_wait_for_a_free_one_at_once(
    service_env, monkeypatch, redis, settings
) -> None:
    """SIGTERM while the main thread waits for a free thread (one thread, two jobs): that wait has no
    timeout to wake it, so the signal itself must end it; the running job hands back and the other
    stays queued."""
    for name, value in {**service_env, "WORKER_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_process_settings", None)  # this worker reads the variables above
    queue = Queue(settings.queue_name, connection=redis)
    jobs = [queue.enqueue(f"{__name__}.hold_until_stopped", job_timeout=120) for _ in range(2)]
    worker = PipelineWorker([settings.queue_name])
    signaled: list[float] = []

    def stop_while_waiting() -> None:
        wait_for(lambda: started(redis, settings) == 1, timeout=20, message="one job running")
        time.sleep(1.5)  # the main thread is now waiting for the only thread
        assert len(queue) == 1
        signaled.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    work_here(worker, stop_while_waiting)
    assert signaled and time.monotonic() - signaled[0] < 5
    assert sorted(queue.get_job_ids()) == sorted(job.id for job in jobs)
    assert started(redis, settings) == 0


def count_run(redis_url: str) -> None:
    """A job that counts its runs."""
    Redis.from_url(redis_url).incr("test:runs")


@pytest.mark.timeout(60)
def test_a_job_put_back_while_its_worker_was_slow_to_start_it_runs_once(
    service_env, monkeypatch, redis, settings, caplog
) -> None:
    """A worker starved between taking a job and starting it looks dead to the janitor, which puts the
    job back for another worker: the slow one lets it go instead of running it too (and frees its
    only thread for the next job)."""
    for name, value in {**service_env, "WORKER_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_process_settings", None)
    queue = Queue(settings.queue_name, connection=redis)
    queue.enqueue(f"{__name__}.count_run", service_env["REDIS_URL"])
    janitor = StrandedJobs(after=0)
    prepare = PipelineWorker.prepare_execution
    put_back: list[int] = []

    def slow_start(self: PipelineWorker, job: Job) -> Execution:
        if not put_back:  # the first time only: the janitor's sweep while this worker is stalled
            put_back.append(janitor.put_back(SimpleNamespace(queue=queue, redis=redis)))
        return prepare(self, job)

    monkeypatch.setattr(PipelineWorker, "prepare_execution", slow_start)
    worker = PipelineWorker([settings.queue_name])
    work_here(worker, burst=True)
    assert put_back == [1]
    assert redis.get("test:runs") == b"1"
    assert "another worker runs it" in caplog.text
    assert started(redis, settings) == 0 and queue.intermediate_queue.get_job_ids() == []


@pytest.mark.timeout(60)
def test_a_worker_on_several_queues_runs_its_jobs_without_the_intermediate_list(
    service_env, monkeypatch, redis, settings
) -> None:
    """With more than one queue RQ takes jobs without its intermediate list: there is nothing to
    claim there, and the job runs (it is not mistaken for one the janitor put back)."""
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_process_settings", None)
    queue = Queue(settings.queue_name, connection=redis)
    queue.enqueue(f"{__name__}.count_run", service_env["REDIS_URL"])
    worker = PipelineWorker([settings.queue_name, f"{settings.queue_name}-other"])
    work_here(worker, burst=True)
    assert redis.get("test:runs") == b"1"
