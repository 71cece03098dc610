"""The request lifecycle on real RQ workers and Redis: cancel, redelivery, signed callbacks,
per-request callback URLs, idempotency under concurrency, and recovery after crashes."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from rq.job import Job, JobStatus
from standardwebhooks.webhooks import Webhook

from jobs.identity import RequestIdentity
from jobs.store import ACTIVE_KEY, PIPELINE_RETRIES
from tests.api import Api
from tests.fakes import Fault
from tests.helpers import wait_for

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAILED = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}


def test_cancel_queued_request_never_reaches_a_provider(api, fakes, start_process) -> None:
    api.submit("cq", expect=202)
    resp = api.cancel("cq")
    assert resp.status_code == 202
    assert resp.get_json()["status"] == "canceled"
    start_process("worker")
    assert api.one_callback("cq") == FAILED
    record = api.settled("cq")
    assert record["status"] == "canceled"
    assert record["error"]["code"] == "canceled"
    time.sleep(0.5)
    assert fakes.replicate.creates == [] and fakes.pika.generates == []
    assert len(fakes.game.callbacks_for("cq")) == 1


def test_cancel_running_request_stops_polling_and_calls_back_once(api, fakes, worker) -> None:
    fakes.pika.outcome = "never"
    api.submit("cr", expect=202)
    wait_for(lambda: api.record("cr")["provider"]["job_id"], message="a Pika job")
    started = time.monotonic()
    assert api.cancel("cr").status_code == 202
    record = api.settled("cr")
    assert time.monotonic() - started < 5
    assert record["status"] == "canceled"
    assert api.one_callback("cr") == FAILED
    polls = sum(fakes.pika.polls.values())
    time.sleep(1.5)
    assert sum(fakes.pika.polls.values()) <= polls + 1  # at most one poll already under way
    assert len(fakes.pika.generates) == 1


def test_cancel_while_captioning_cancels_the_prediction(api, fakes, worker) -> None:
    fakes.replicate.outcome = "never"
    api.submit("cc", expect=202)
    wait_for(lambda: fakes.replicate.predictions, message="a prediction")
    api.cancel("cc")
    api.one_callback("cc")
    wait_for(lambda: fakes.replicate.cancels, message="the prediction canceled")
    assert fakes.pika.generates == []


def test_cancel_finished_request_is_409(api, fakes, worker) -> None:
    api.submit("cf", expect=202)
    api.settled("cf")
    resp = api.cancel("cf")
    assert resp.status_code == 409
    assert resp.mimetype == "application/problem+json"
    assert api.cancel("unknown").status_code == 404


def test_failed_callback_can_be_sent_again_with_the_same_webhook_id(api, fakes, worker) -> None:
    fakes.game.add_fault("callback", Fault.error(503), times=4)  # the first attempt and its 3 retries
    api.submit("rd", expect=202)
    record = api.settled("rd")
    assert record["callback"]["status"] == "failed"
    first_ids = {r.headers["webhook-id"] for r in fakes.game.requests_for("callback")}
    resp = api.redeliver("rd")
    assert resp.status_code == 202
    record = api.settled("rd")
    assert record["callback"]["status"] == "delivered"
    assert len(fakes.game.callbacks_for("rd")) == 1
    assert {r.headers["webhook-id"] for r in fakes.game.requests_for("callback")} == first_ids
    assert api.redeliver("rd").status_code == 409  # delivered: never twice


def test_signed_callbacks_verify_with_standardwebhooks(api, fakes, start_process) -> None:
    fakes.game.add_fault("callback", Fault.error(500))
    start_process("worker", CALLBACK_SIGNING_SECRET=SECRET)
    api.submit("signed", expect=202)
    api.settled("signed")
    attempts = fakes.game.requests_for("callback")
    assert len(attempts) == 2
    for attempt in attempts:
        Webhook(SECRET).verify(attempt.body, dict(attempt.headers))
    assert attempts[0].headers["webhook-id"] == attempts[1].headers["webhook-id"]
    assert attempts[0].headers["webhook-signature"] != attempts[1].headers["webhook-signature"] or (
        attempts[0].headers["webhook-timestamp"] == attempts[1].headers["webhook-timestamp"]
    )


def test_callback_url_needs_an_allowed_host_and_never_gets_the_game_key(api, app, fakes, start_process) -> None:
    fakes.game.require_key = False  # so that a callback without the key is recorded, not refused
    url = fakes.game.callback_url_template().replace("{request_id}", "own")
    resp = api.submit("own", "https://x.io/a.jpg", callback_url=url)
    assert resp.status_code == 422
    assert "callback_url" in resp.get_json()["detail"]
    resp = api.submit("own", "https://x.io/a.jpg", callback_url="https://hooks.example.com/x")
    assert resp.status_code == 422
    assert "CALLBACK_URL_ALLOWLIST" in resp.get_json()["detail"]

    settings = app.extensions["i2v"]["settings"]
    app.extensions["i2v"]["settings"] = type(settings)(
        **{**settings.__dict__, "callback_url_allowlist": ("127.0.0.1",)}
    )
    # The GAME host is another origin here: the per-request URL lives on a second fake path and port.
    start_process("worker", CALLBACK_API_URL="http://127.0.0.1:9/requests")
    resp = api.submit("own", "https://x.io/a.jpg", callback_url=url)
    assert resp.status_code == 202
    wait_for(lambda: fakes.game.callbacks_for("own"), message="the callback at the request's own URL")
    [callback] = fakes.game.callbacks_for("own")
    assert "x-api-key" not in callback.headers
    assert callback.path == "/hooks/own"


def test_resubmits_under_concurrency_make_exactly_one_of_everything(app, fakes, start_process) -> None:
    for _ in range(3):
        start_process("worker")
    ids = [f"conc-{n}" for n in range(100)]

    def post(n: int) -> int:
        with app.test_client() as c:
            return Api(c).submit(ids[n % 100], "https://x.io/a.jpg").status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(post, range(1000)))
    assert codes.count(202) == 100
    assert codes.count(200) == 900
    wait_for(lambda: len(fakes.game.callbacks) >= 100, timeout=120, message="100 callbacks")
    time.sleep(1)
    assert len(fakes.game.callbacks) == 100
    assert sorted(c.request_id for c in fakes.game.callbacks) == sorted(ids)
    assert len(fakes.replicate.creates) == 100
    assert len(fakes.pika.generates) == 100


#: Room for a slow video: resumed requests keep the deadline saved at submission.
SLOW = {"MAX_CHECK_TIME": "30"}


def slow_request(api, fakes, request_id: str) -> None:
    """Submit a request whose video takes a while, and wait until Pika has its job."""
    fakes.pika.duration = 5
    api.submit(request_id, expect=202)
    wait_for(lambda: api.record(request_id)["provider"]["job_id"], message="a Pika job")


def assert_resumed_once(api, fakes, request_id: str) -> dict:
    record = api.settled(request_id, timeout=60)
    assert record["status"] == "completed", record
    api.one_callback(request_id)
    assert len(fakes.replicate.creates) == 1
    assert len(fakes.pika.generates) == 1
    return record


def test_sigkill_of_the_whole_worker_resumes_on_another(api, fakes, start_process) -> None:
    doomed = start_process("worker", **SLOW)
    start_process("scheduler", **SLOW)
    slow_request(api, fakes, "killed")
    doomed.kill()
    killed_at = time.monotonic()
    start_process("worker", **SLOW)
    assert_resumed_once(api, fakes, "killed")
    assert time.monotonic() - killed_at < 60


def test_killed_worker_process_of_a_pool_is_replaced_and_the_request_resumes(api, fakes, start_process, redis) -> None:
    pool = start_process("worker", **SLOW, WORKER_PROCESSES="2")
    start_process("scheduler", **SLOW)
    slow_request(api, fakes, "oom")
    # An OOM kill takes the process running the request (RQ names it as the job's worker); the
    # pool starts a new one.
    from tests.helpers import descendants

    holder = Job.fetch(RequestIdentity("", "oom").job_id, connection=redis).worker_name
    pid = int(redis.hget(f"rq:worker:{holder}", "pid") or 0)
    assert pid in descendants(pool.proc.pid), pool.output[-2000:]
    os.kill(pid, signal.SIGKILL)
    assert_resumed_once(api, fakes, "oom")
    assert Job.fetch(RequestIdentity("", "oom").job_id, connection=redis).worker_name != holder


def test_sigterm_requeues_at_once_for_another_worker(api, fakes, start_process, redis) -> None:
    leaving = start_process("worker", **SLOW)
    slow_request(api, fakes, "termed")
    start_process("worker", **SLOW)
    leaving.signal(signal.SIGTERM)
    leaving.proc.wait(timeout=10)
    # Handed back, not finished by a warm shutdown: the worker is gone and the request is not done.
    assert api.record("termed")["status"] == "processing"
    assert fakes.game.callbacks_for("termed") == []
    record = assert_resumed_once(api, fakes, "termed")
    assert record["status"] == "completed"


#: A deploy's restarts come faster than any video: Pika's job is finished by the test.
DEPLOYS = {"MAX_CHECK_TIME": "300"}


def test_restarts_in_a_row_never_use_up_the_retries(api, fakes, start_process, redis) -> None:
    """More SIGTERM restarts than PIPELINE_RETRIES: each hands the request back without spending a retry."""
    fakes.pika.duration = 600
    api.submit("deploys", expect=202)
    job_id = RequestIdentity("", "deploys").job_id
    for _ in range(PIPELINE_RETRIES + 2):
        leaving = start_process("worker", **DEPLOYS)
        wait_for(
            lambda: Job.fetch(job_id, connection=redis).get_status() == JobStatus.STARTED,
            timeout=20,
            message="a worker to start the request",
        )
        wait_for(lambda: fakes.pika.generates, message="the Pika job")  # later restarts stop a waiting request
        leaving.signal(signal.SIGTERM)
        leaving.proc.wait(timeout=10)
        job = Job.fetch(job_id, connection=redis)
        assert job.get_status() == JobStatus.QUEUED, "the request went back to the queue"
        assert job.retries_left == PIPELINE_RETRIES, "a restart is not a failure"
        assert api.record("deploys")["status"] in ("queued", "processing")
    assert fakes.game.callbacks == []
    fakes.pika.finish_now(next(iter(fakes.pika.jobs)))
    start_process("worker", **DEPLOYS)
    record = api.settled("deploys", timeout=30)
    assert record["status"] == "completed", record
    api.one_callback("deploys")
    assert len(fakes.replicate.creates) == 1
    assert len(fakes.pika.generates) == 1


def test_janitor_reenqueues_a_request_whose_job_was_lost(api, fakes, start_process, redis) -> None:
    api.submit("lost", expect=202)
    job_id = RequestIdentity("", "lost").job_id
    redis.delete(f"rq:job:{job_id}")
    redis.lrem("rq:queue:i2v", 0, job_id)
    start_process("worker")
    start_process("scheduler")
    assert api.settled("lost", timeout=30)["status"] == "completed"
    assert redis.zscore(ACTIVE_KEY, RequestIdentity("", "lost").record_key) is None


def test_janitor_restarts_an_interrupted_callback(api, fakes, start_process, redis, settings) -> None:
    from jobs.store import RequestStore

    api.submit("cbcrash", expect=202)
    store = RequestStore(redis, settings.record_ttl)
    key = RequestIdentity("", "cbcrash").record_key
    redis.delete(f"rq:job:{RequestIdentity('', 'cbcrash').job_id}")
    redis.lrem("rq:queue:i2v", 0, RequestIdentity("", "cbcrash").job_id)
    # A worker finished the request and died right after claiming the first delivery attempt.
    store.finish(key, "failed", error_code="generation_failed", error_message="x", stage="delivering")
    store.claim(key, "callback_claim_1", 60)
    start_process("worker")
    start_process("scheduler")
    assert api.one_callback("cbcrash") == FAILED
    assert api.settled("cbcrash", timeout=30)["callback"]["status"] == "delivered"


def test_janitor_puts_back_a_job_whose_worker_died_between_dequeue_and_start(api, fakes, start_process, redis) -> None:
    api.submit("limbo", expect=202)
    # A worker took the job off the queue (RQ moves it to an intermediate list) and died before it
    # marked the job started: the job still says queued, and no worker looks at that list in time.
    assert redis.lmove("rq:queue:i2v", "rq:queue:i2v:intermediate") == RequestIdentity("", "limbo").job_id.encode()
    start_process("worker")
    start_process("scheduler")
    assert api.settled("limbo", timeout=40)["status"] == "completed"
    assert api.one_callback("limbo")["data"]["status"] == "COMPLETED"
    assert len(fakes.pika.generates) == 1
    assert redis.llen("rq:queue:i2v:intermediate") == 0


def test_janitor_puts_back_a_callback_stranded_between_dequeue_and_start(
    api, fakes, start_process, redis, settings
) -> None:
    from rq import Queue

    from jobs.store import RequestStore, enqueue_delivery

    api.submit("limbo-cb", expect=202)
    key = RequestIdentity("", "limbo-cb").record_key
    redis.delete(f"rq:job:{RequestIdentity('', 'limbo-cb').job_id}")
    redis.lrem("rq:queue:i2v", 0, RequestIdentity("", "limbo-cb").job_id)
    RequestStore(redis, settings.record_ttl).finish(key, "failed", error_code="generation_failed", error_message="x")
    delivery = enqueue_delivery(Queue("i2v", connection=redis), RequestIdentity("", "limbo-cb"))
    # The worker that took the first delivery attempt off the queue died before starting it.
    assert redis.lmove("rq:queue:i2v", "rq:queue:i2v:intermediate") == delivery.id.encode()
    start_process("worker")
    start_process("scheduler")
    assert api.one_callback("limbo-cb") == FAILED
    assert api.settled("limbo-cb", timeout=40)["callback"]["status"] == "delivered"


@pytest.mark.parametrize("count", [3])
def test_status_eta_counts_the_queue(app, api, redis, fakes, count) -> None:
    # Two threads per worker process: the first two requests start together, the third after them.
    app.extensions["i2v"]["settings"] = dataclasses.replace(app.extensions["i2v"]["settings"], worker_threads=2)
    for n in range(count):
        api.submit(f"eta-{n}", expect=202)
    etas = [api.record(f"eta-{n}")["eta_seconds"] for n in range(count)]
    assert etas[0] == etas[1] < etas[2]


def test_cli_status_cancel_and_redeliver(runner, api, fakes) -> None:
    api.submit("cli-1", expect=202)
    out = runner.invoke(args=["i2v", "status", "cli-1"])
    assert out.exit_code == 0 and '"status": "queued"' in out.output
    out = runner.invoke(args=["i2v", "cancel", "cli-1"])
    assert out.exit_code == 0 and '"status": "canceled"' in out.output
    out = runner.invoke(args=["i2v", "cancel", "cli-1"])
    assert out.exit_code != 0 and "already finished" in out.output
    out = runner.invoke(args=["i2v", "redeliver", "cli-1"])
    assert out.exit_code != 0 and "not failed" in out.output
    out = runner.invoke(args=["i2v", "status", "nope"])
    assert out.exit_code != 0 and "no request" in out.output
