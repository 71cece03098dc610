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
from tests.fakes import Fault
from tests.helpers import wait_for
from tests.integration.test_pipeline import final_record, one_callback, submit

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAILED = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}


def status_of(client, request_id: str) -> dict:
    return client.get(f"/api/v1/i2v/{request_id}").get_json()


def test_cancel_queued_request_never_reaches_a_provider(client, fakes, start_process) -> None:
    fake_replicate, fake_pika, fake_game = fakes
    submit(client, "cq")
    resp = client.delete("/api/v1/i2v/cq")
    assert resp.status_code == 202
    assert resp.get_json()["status"] == "canceled"
    start_process("worker")
    assert one_callback(fake_game, "cq") == FAILED
    record = final_record(client, "cq")
    assert record["status"] == "canceled"
    assert record["error"]["code"] == "canceled"
    time.sleep(0.5)
    assert fake_replicate.creates == [] and fake_pika.generates == []
    assert len(fake_game.callbacks_for("cq")) == 1


def test_cancel_running_request_stops_polling_and_calls_back_once(client, fakes, worker) -> None:
    _, fake_pika, fake_game = fakes
    fake_pika.outcome = "never"
    submit(client, "cr")
    wait_for(lambda: status_of(client, "cr")["provider"]["job_id"], what="a Pika job")
    started = time.monotonic()
    assert client.delete("/api/v1/i2v/cr").status_code == 202
    record = final_record(client, "cr")
    assert time.monotonic() - started < 5
    assert record["status"] == "canceled"
    assert one_callback(fake_game, "cr") == FAILED
    polls = sum(fake_pika.polls.values())
    time.sleep(1.5)
    assert sum(fake_pika.polls.values()) <= polls + 1  # at most one poll already under way
    assert len(fake_pika.generates) == 1


def test_cancel_while_captioning_cancels_the_prediction(client, fakes, worker) -> None:
    fake_replicate, fake_pika, fake_game = fakes
    fake_replicate.outcome = "never"
    submit(client, "cc")
    wait_for(lambda: fake_replicate.predictions, what="a prediction")
    client.delete("/api/v1/i2v/cc")
    one_callback(fake_game, "cc")
    wait_for(lambda: fake_replicate.cancels, what="the prediction canceled")
    assert fake_pika.generates == []


def test_cancel_finished_request_is_409(client, fakes, worker) -> None:
    submit(client, "cf")
    final_record(client, "cf")
    resp = client.delete("/api/v1/i2v/cf")
    assert resp.status_code == 409
    assert resp.mimetype == "application/problem+json"
    assert client.delete("/api/v1/i2v/unknown").status_code == 404


def test_failed_callback_can_be_sent_again_with_the_same_webhook_id(client, fakes, worker) -> None:
    _, _, fake_game = fakes
    fake_game.add_fault("callback", Fault.error(503), times=4)  # the first attempt and its 3 retries
    submit(client, "rd")
    record = final_record(client, "rd")
    assert record["callback"]["status"] == "failed"
    first_ids = {r.headers["webhook-id"] for r in fake_game.requests_for("callback")}
    resp = client.post("/api/v1/i2v/rd/callback")
    assert resp.status_code == 202
    record = final_record(client, "rd")
    assert record["callback"]["status"] == "delivered"
    assert len(fake_game.callbacks_for("rd")) == 1
    assert {r.headers["webhook-id"] for r in fake_game.requests_for("callback")} == first_ids
    assert client.post("/api/v1/i2v/rd/callback").status_code == 409  # delivered: never twice


def test_signed_callbacks_verify_with_standardwebhooks(client, fakes, start_process) -> None:
    _, _, fake_game = fakes
    fake_game.add_fault("callback", Fault.error(500))
    start_process("worker", CALLBACK_SIGNING_SECRET=SECRET)
    submit(client, "signed")
    final_record(client, "signed")
    attempts = fake_game.requests_for("callback")
    assert len(attempts) == 2
    for attempt in attempts:
        Webhook(SECRET).verify(attempt.body, dict(attempt.headers))
    assert attempts[0].headers["webhook-id"] == attempts[1].headers["webhook-id"]
    assert attempts[0].headers["webhook-signature"] != attempts[1].headers["webhook-signature"] or (
        attempts[0].headers["webhook-timestamp"] == attempts[1].headers["webhook-timestamp"]
    )


def test_callback_url_needs_an_allowed_host_and_never_gets_the_game_key(app, client, fakes, start_process) -> None:
    _, _, fake_game = fakes
    fake_game.require_key = False  # so that a callback without the key is recorded, not refused
    url = fake_game.callback_url_template().replace("{request_id}", "own")
    resp = client.post(
        "/api/v1/i2v", json={"image_id": "https://x.io/a.jpg", "callback_url": url}, headers={"x-request-id": "own"}
    )
    assert resp.status_code == 422
    assert "callback_url" in resp.get_json()["detail"]
    resp = client.post(
        "/api/v1/i2v",
        json={"image_id": "https://x.io/a.jpg", "callback_url": "https://hooks.example.com/x"},
        headers={"x-request-id": "own"},
    )
    assert resp.status_code == 422
    assert "CALLBACK_URL_ALLOWLIST" in resp.get_json()["detail"]

    settings = app.extensions["i2v"]["settings"]
    app.extensions["i2v"]["settings"] = type(settings)(
        **{**settings.__dict__, "callback_url_allowlist": ("127.0.0.1",)}
    )
    # The GAME host is another origin here: the per-request URL lives on a second fake path and port.
    start_process("worker", CALLBACK_API_URL="http://127.0.0.1:9/requests")
    resp = client.post(
        "/api/v1/i2v", json={"image_id": "https://x.io/a.jpg", "callback_url": url}, headers={"x-request-id": "own"}
    )
    assert resp.status_code == 202
    wait_for(lambda: fake_game.callbacks_for("own"), what="the callback at the request's own URL")
    [callback] = fake_game.callbacks_for("own")
    assert "x-api-key" not in callback.headers
    assert callback.path == "/hooks/own"


def test_resubmits_under_concurrency_make_exactly_one_of_everything(app, fakes, start_process) -> None:
    fake_replicate, fake_pika, fake_game = fakes
    for _ in range(3):
        start_process("worker")
    ids = [f"conc-{n}" for n in range(100)]

    def post(n: int) -> int:
        with app.test_client() as c:
            resp = c.post(
                "/api/v1/i2v", json={"image_id": "https://x.io/a.jpg"}, headers={"x-request-id": ids[n % 100]}
            )
            return resp.status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(post, range(1000)))
    assert codes.count(202) == 100
    assert codes.count(200) == 900
    wait_for(lambda: len(fake_game.callbacks) >= 100, timeout=120, what="100 callbacks")
    time.sleep(1)
    assert len(fake_game.callbacks) == 100
    assert sorted(c.request_id for c in fake_game.callbacks) == sorted(ids)
    assert len(fake_replicate.creates) == 100
    assert len(fake_pika.generates) == 100


#: Room for a slow video: resumed requests keep the deadline saved at submission.
SLOW = {"MAX_CHECK_TIME": "30"}


def slow_request(client, fakes, request_id: str) -> None:
    """Submit a request whose video takes a while, and wait until Pika has its job."""
    _, fake_pika, _ = fakes
    fake_pika.duration = 5
    submit(client, request_id)
    wait_for(lambda: status_of(client, request_id)["provider"]["job_id"], what="a Pika job")


def assert_resumed_once(client, fakes, request_id: str) -> dict:
    fake_replicate, fake_pika, fake_game = fakes
    record = final_record(client, request_id, timeout=60)
    assert record["status"] == "completed", record
    one_callback(fake_game, request_id)
    assert len(fake_replicate.creates) == 1
    assert len(fake_pika.generates) == 1
    return record


def test_sigkill_of_the_whole_worker_resumes_on_another(client, fakes, start_process) -> None:
    doomed = start_process("worker", **SLOW)
    start_process("scheduler", **SLOW)
    slow_request(client, fakes, "killed")
    doomed.kill()
    killed_at = time.monotonic()
    start_process("worker", **SLOW)
    assert_resumed_once(client, fakes, "killed")
    assert time.monotonic() - killed_at < 60


def test_killed_worker_process_of_a_pool_is_replaced_and_the_request_resumes(
    client, fakes, start_process, redis
) -> None:
    pool = start_process("worker", **SLOW, WORKER_PROCESSES="2")
    start_process("scheduler", **SLOW)
    slow_request(client, fakes, "oom")
    # An OOM kill takes the process running the request (RQ names it as the job's worker); the
    # pool starts a new one.
    from tests.helpers import descendants

    holder = Job.fetch(RequestIdentity("", "oom").job_id, connection=redis).worker_name
    pid = int(redis.hget(f"rq:worker:{holder}", "pid") or 0)
    assert pid in descendants(pool.proc.pid), pool.output[-2000:]
    os.kill(pid, signal.SIGKILL)
    assert_resumed_once(client, fakes, "oom")
    assert Job.fetch(RequestIdentity("", "oom").job_id, connection=redis).worker_name != holder


def test_sigterm_requeues_at_once_for_another_worker(client, fakes, start_process, redis) -> None:
    leaving = start_process("worker", **SLOW)
    slow_request(client, fakes, "termed")
    start_process("worker", **SLOW)
    leaving.signal(signal.SIGTERM)
    leaving.proc.wait(timeout=10)
    # Handed back, not finished by a warm shutdown: the worker is gone and the request is not done.
    assert status_of(client, "termed")["status"] == "processing"
    assert fakes[2].callbacks_for("termed") == []
    record = assert_resumed_once(client, fakes, "termed")
    assert record["status"] == "completed"


#: A deploy's restarts come faster than any video: Pika's job is finished by the test.
DEPLOYS = {"MAX_CHECK_TIME": "300"}


def test_restarts_in_a_row_never_use_up_the_retries(client, fakes, start_process, redis) -> None:
    """More SIGTERM restarts than PIPELINE_RETRIES: each hands the request back without spending a retry."""
    fake_replicate, fake_pika, fake_game = fakes
    fake_pika.duration = 600
    submit(client, "deploys")
    job_id = RequestIdentity("", "deploys").job_id
    for _ in range(PIPELINE_RETRIES + 2):
        leaving = start_process("worker", **DEPLOYS)
        wait_for(
            lambda: Job.fetch(job_id, connection=redis).get_status() == JobStatus.STARTED,
            timeout=20,
            what="a worker to start the request",
        )
        wait_for(lambda: fake_pika.generates, what="the Pika job")  # later restarts stop a waiting request
        leaving.signal(signal.SIGTERM)
        leaving.proc.wait(timeout=10)
        job = Job.fetch(job_id, connection=redis)
        assert job.get_status() == JobStatus.QUEUED, "the request went back to the queue"
        assert job.retries_left == PIPELINE_RETRIES, "a restart is not a failure"
        assert status_of(client, "deploys")["status"] in ("queued", "processing")
    assert fake_game.callbacks == []
    fake_pika.finish_now(next(iter(fake_pika.jobs)))
    start_process("worker", **DEPLOYS)
    record = final_record(client, "deploys", timeout=30)
    assert record["status"] == "completed", record
    one_callback(fake_game, "deploys")
    assert len(fake_replicate.creates) == 1
    assert len(fake_pika.generates) == 1


def test_janitor_reenqueues_a_request_whose_job_was_lost(client, fakes, start_process, redis) -> None:
    submit(client, "lost")
    job_id = RequestIdentity("", "lost").job_id
    redis.delete(f"rq:job:{job_id}")
    redis.lrem("rq:queue:i2v", 0, job_id)
    start_process("worker")
    start_process("scheduler")
    assert final_record(client, "lost", timeout=30)["status"] == "completed"
    assert redis.zscore(ACTIVE_KEY, RequestIdentity("", "lost").record_key) is None


def test_janitor_restarts_an_interrupted_callback(client, fakes, start_process, redis, settings) -> None:
    from jobs.store import RequestStore

    _, _, fake_game = fakes
    submit(client, "cbcrash")
    store = RequestStore(redis, settings.record_ttl)
    key = RequestIdentity("", "cbcrash").record_key
    redis.delete(f"rq:job:{RequestIdentity('', 'cbcrash').job_id}")
    redis.lrem("rq:queue:i2v", 0, RequestIdentity("", "cbcrash").job_id)
    # A worker finished the request and died right after claiming the first delivery attempt.
    store.finish(key, "failed", error_code="generation_failed", error_message="x", stage="delivering")
    store.claim(key, "callback_claim_1", 60)
    start_process("worker")
    start_process("scheduler")
    assert one_callback(fake_game, "cbcrash") == FAILED
    assert final_record(client, "cbcrash", timeout=30)["callback"]["status"] == "delivered"


def test_janitor_puts_back_a_job_whose_worker_died_between_dequeue_and_start(
    client, fakes, start_process, redis
) -> None:
    _, fake_pika, fake_game = fakes
    submit(client, "limbo")
    # A worker took the job off the queue (RQ moves it to an intermediate list) and died before it
    # marked the job started: the job still says queued, and no worker looks at that list in time.
    assert redis.lmove("rq:queue:i2v", "rq:queue:i2v:intermediate") == RequestIdentity("", "limbo").job_id.encode()
    start_process("worker")
    start_process("scheduler")
    assert final_record(client, "limbo", timeout=40)["status"] == "completed"
    assert one_callback(fake_game, "limbo")["data"]["status"] == "COMPLETED"
    assert len(fake_pika.generates) == 1
    assert redis.llen("rq:queue:i2v:intermediate") == 0


def test_janitor_puts_back_a_callback_stranded_between_dequeue_and_start(
    client, fakes, start_process, redis, settings
) -> None:
    from rq import Queue

    from jobs.store import RequestStore, enqueue_delivery

    _, _, fake_game = fakes
    submit(client, "limbo-cb")
    key = RequestIdentity("", "limbo-cb").record_key
    redis.delete(f"rq:job:{RequestIdentity('', 'limbo-cb').job_id}")
    redis.lrem("rq:queue:i2v", 0, RequestIdentity("", "limbo-cb").job_id)
    RequestStore(redis, settings.record_ttl).finish(key, "failed", error_code="generation_failed", error_message="x")
    delivery = enqueue_delivery(Queue("i2v", connection=redis), RequestIdentity("", "limbo-cb"))
    # The worker that took the first delivery attempt off the queue died before starting it.
    assert redis.lmove("rq:queue:i2v", "rq:queue:i2v:intermediate") == delivery.id.encode()
    start_process("worker")
    start_process("scheduler")
    assert one_callback(fake_game, "limbo-cb") == FAILED
    assert final_record(client, "limbo-cb", timeout=40)["callback"]["status"] == "delivered"


@pytest.mark.parametrize("count", [3])
def test_status_eta_counts_the_queue(app, client, redis, fakes, count) -> None:
    # Two threads per worker process: the first two requests start together, the third after them.
    app.extensions["i2v"]["settings"] = dataclasses.replace(app.extensions["i2v"]["settings"], worker_threads=2)
    for n in range(count):
        submit(client, f"eta-{n}")
    etas = [status_of(client, f"eta-{n}")["eta_seconds"] for n in range(count)]
    assert etas[0] == etas[1] < etas[2]


def test_cli_status_cancel_and_redeliver(runner, client, fakes) -> None:
    submit(client, "cli-1")
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
