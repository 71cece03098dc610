"""Every documented failure path on a real RQ worker and Redis, against the fakes.

Each test here fails when the behaviour it names is taken out of the service: the "Provider errors"
table of docs/api.md and "Crash safety" in docs/architecture.md, the Pika settings on the wire, and
callback delivery.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import pytest
from redis import Redis
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from jobs.context import build_context
from jobs.delivery import attempt_delivery
from jobs.identity import RequestIdentity
from jobs.slots import SLOTS_KEY
from launch import free_port
from tests.fakes import Fault
from tests.helpers import wait_for

#: Quiet time after a request settles in which a second callback would show up.
DUPLICATE_GRACE = 0.5
#: RQ retries of the pipeline job (``Retry(max=5)``), as docs/architecture.md documents them.
PIPELINE_RETRIES = 5


def stored(redis: Redis, request_id: str, name: str) -> str | None:
    """One field of a request's record (auth is off in these tests, so the owner is empty)."""
    value = redis.hget(RequestIdentity("", request_id).record_key, name)
    return value.decode() if value else None


def iso_utc(ts: float) -> str:
    """A Unix time in the record's ISO form, so that the two compare as strings."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- crash-window markers ---------------------------------------------------------------------------


def test_resumed_job_with_a_caption_create_in_flight_never_creates_again(api, redis, fakes, start_process) -> None:
    """A job that died after sending a Replicate create but before saving its id: caption_failed, no create."""
    api.submit("cap-window", expect=202)
    # What a worker dying inside the window leaves behind: the marker set, no prediction id.
    redis.hset(RequestIdentity("", "cap-window").record_key, mapping={"caption_inflight": "1", "stage": "captioning"})
    start_process("worker")
    record = api.failed_with("cap-window", "caption_failed")
    assert "may have created a prediction" in record["error"]["message"]
    assert fakes.replicate.requests_for("create") == []
    assert fakes.pika.requests_for("generate") == []


def test_resumed_job_with_a_video_submission_in_flight_never_submits_again(api, redis, fakes, start_process) -> None:
    """A job that died after sending a Pika submission but before saving its id: generation_unknown, no resubmit."""
    api.submit("sub-window", expect=202)
    redis.hset(
        RequestIdentity("", "sub-window").record_key,
        mapping={"prompt": "a plane over the sea", "submit_inflight": "1", "stage": "submitting"},
    )
    start_process("worker")
    record = api.failed_with("sub-window", "generation_unknown")
    assert "submission whose answer was lost" in record["error"]["message"]
    assert fakes.pika.requests_for("generate") == []
    assert fakes.replicate.requests_for("create") == []


#: The provider holds the create or submission this long while the worker is killed; the worker waits longer.
HELD = 10.0


@pytest.mark.parametrize(
    ("provider", "route", "code"),
    [("replicate", "create", "caption_failed"), ("pika", "generate", "generation_unknown")],
)
def test_worker_killed_while_a_create_is_in_flight_does_not_pay_twice(
    api, fakes, start_process, provider: str, route: str, code: str
) -> None:
    """SIGKILL while the provider holds a create (caption) or submission (video): the resumed job ends as
    docs/architecture.md documents, and the provider saw that one request only."""
    fake = {"replicate": fakes.replicate, "pika": fakes.pika}[provider]
    fake.add_fault(route, Fault.slow(HELD))  # answered, but only after the worker is gone
    # The worker would wait for the answer, so the kill surely lands inside the window.
    env = {"HTTP_READ_TIMEOUT": str(3 * HELD)}
    doomed = start_process("worker", **env)
    start_process("scheduler", **env)
    request_id = f"killed-in-{route}"
    api.submit(request_id, expect=202)
    wait_for(lambda: fake.requests_for(route), timeout=20, message=f"the {provider} {route}")
    doomed.kill()
    start_process("worker", **env)
    # The janitor hands the dead execution back once its heartbeat lapses (about 16 s here).
    record = api.settled(request_id, timeout=45)
    assert record["status"] == "failed", record
    assert record["error"]["code"] == code, record["error"]
    time.sleep(DUPLICATE_GRACE)
    api.one_callback(request_id)
    assert len(fake.requests_for(route)) == 1


# -- RQ retries used up ------------------------------------------------------------------------------


def test_unexpected_error_is_retried_then_internal_error_with_one_callback(api, redis, fakes, start_process) -> None:
    """An exception outside the taxonomy is retried by RQ five times, then internal_error and one FAILED callback."""
    # A damaged slot set: every slot read raises a Redis WRONGTYPE error, which no step expects.
    redis.set(SLOTS_KEY, "not a sorted set")
    start_process("worker", PIKA_MAX_CONCURRENCY="1")
    api.submit("retries-out", expect=202)
    record = api.failed_with("retries-out", "internal_error")
    assert "unexpected ResponseError" in record["error"]["message"]
    time.sleep(DUPLICATE_GRACE)
    assert len(fakes.game.callbacks_for("retries-out")) == 1
    job = Job.fetch(RequestIdentity("", "retries-out").job_id, connection=redis)
    assert job.retries_left == 0, "the request failed before RQ's retries were used up"
    # Each retry resumed from the record: the caption was made once.
    assert len(fakes.replicate.creates) == 1
    assert fakes.pika.requests_for("generate") == []


# -- captioning ------------------------------------------------------------------------------------


def test_caption_timeout_cancels_the_prediction_then_caption_failed(api, redis, fakes, start_process) -> None:
    """No prompt within CAPTION_TIMEOUT: the prediction is canceled, then caption_failed and one callback."""
    fakes.replicate.outcome = "never"
    start_process("worker", CAPTION_TIMEOUT="1")
    api.submit("cap-timeout", expect=202)
    record = api.failed_with("cap-timeout", "caption_failed")
    assert "no prompt within 1 s" in record["error"]["message"]
    prediction_id = stored(redis, "cap-timeout", "prediction_id")
    assert fakes.replicate.cancels == [prediction_id]
    [cancel] = fakes.replicate.requests_for("cancel")
    assert cancel.at <= fakes.game.callbacks_for("cap-timeout")[0].at
    assert fakes.pika.requests_for("generate") == []


@pytest.mark.parametrize(("route", "status"), [("create", 401), ("create", 422), ("get", 404)])
def test_replicate_refusal_is_caption_failed_at_once(api, fakes, worker, route: str, status: int) -> None:
    """Replicate 401/404/422 is not worth a retry: caption_failed after that one call."""
    fakes.replicate.add_fault(route, Fault.error(status), times=None)
    request_id = f"refused-{route}-{status}"
    api.submit(request_id, expect=202)
    record = api.failed_with(request_id, "caption_failed")
    assert f"Replicate refused ({status})" in record["error"]["message"]
    assert len(fakes.replicate.requests_for(route)) == 1
    assert len(fakes.replicate.requests_for("create")) == 1
    assert fakes.pika.requests_for("generate") == []


def test_replicate_429_without_retry_after_waits_as_its_resets_in_hint_says(api, fakes, start_process) -> None:
    """A 429 whose only hint is "resets in ~2s" in its body: the next create comes 2 s later, not at back-off pace."""
    detail = "Request was throttled. Your rate limit resets in ~2s."
    body = {"title": "Too Many Requests", "status": 429, "detail": detail}
    fakes.replicate.add_fault("create", Fault(status=429, body=body))
    # A budget that a slow first call under load cannot use up before the 2 s wait.
    start_process("worker", PROVIDER_RETRY_BUDGET="10")
    api.submit("resets-in", expect=202)
    assert api.settled("resets-in")["status"] == "completed"
    first, second = fakes.replicate.requests_for("create")
    assert "Retry-After" not in first.headers
    # RETRY_BASE_DELAY is 0.05 s in these tests: only the hint can explain a 2 s pause.
    assert second.at - first.at >= 1.9
    api.one_callback("resets-in")


# -- provider_unavailable ----------------------------------------------------------------------------


def test_pika_throttling_past_the_deadline_is_provider_unavailable(api, fakes, worker, settings) -> None:
    """Pika answers 429 until INITIAL_WAIT_TIME + MAX_CHECK_TIME has passed: provider_unavailable, no video."""
    fakes.pika.add_fault("generate", Fault.throttled(retry_after=0.5), times=None)
    api.submit("throttled-out", expect=202)
    api.failed_with("throttled-out", "provider_unavailable")
    attempts = fakes.pika.requests_for("generate")
    assert len(attempts) >= 3  # kept trying while the deadline allowed
    assert attempts[-1].at - attempts[0].at <= settings.generation_deadline + 2  # then it stopped
    assert fakes.pika.generates == []


def test_pika_refusing_connections_is_provider_unavailable(api, fakes, start_process) -> None:
    """Connection refused on submit (never sent): retried as for 5xx, then provider_unavailable."""
    start_process("worker", PIKAPI_BASE_URL=f"http://127.0.0.1:{free_port()}/web")
    api.submit("refused", expect=202)
    record = api.failed_with("refused", "provider_unavailable")
    assert "unreachable" in record["error"]["message"]


def test_no_pika_slot_within_the_deadline_is_provider_unavailable(api, redis, fakes, start_process) -> None:
    """Every slot under PIKA_MAX_CONCURRENCY stays taken past the deadline: provider_unavailable, nothing sent."""
    redis.zadd(SLOTS_KEY, {"someone-else": time.time() + 3600})
    start_process("worker", PIKA_MAX_CONCURRENCY="1")
    api.submit("no-slot", expect=202)
    record = api.failed_with("no-slot", "provider_unavailable")
    assert "slot" in record["error"]["message"]
    assert fakes.pika.requests_for("generate") == []


# -- deadlines after a resume ------------------------------------------------------------------------

#: The deadline of the resume tests, and when the replacement worker starts (both after the saved time).
RESUME_DEADLINE = 10.0
RESUME_AT = 6.0


def test_generation_deadline_runs_from_the_saved_submission_after_a_restart(api, redis, fakes, start_process) -> None:
    """A request whose worker stopped mid-wait gives up INITIAL_WAIT_TIME + MAX_CHECK_TIME after its
    submission, not after the replacement worker picked it up."""
    fakes.pika.outcome = "never"
    timings = {"INITIAL_WAIT_TIME": "0.2", "MAX_CHECK_TIME": str(RESUME_DEADLINE - 0.2)}
    leaving = start_process("worker", **timings)
    api.submit("resume-video", expect=202)
    submitted_at = float(wait_for(lambda: stored(redis, "resume-video", "submitted_at"), timeout=20))
    leaving.signal(signal.SIGTERM)
    leaving.proc.wait(timeout=15)
    stopped_at = time.time()
    time.sleep(max(0.0, submitted_at + RESUME_AT - time.time()))
    start_process("worker", **timings)
    record = api.settled("resume-video", timeout=RESUME_AT + 2 * RESUME_DEADLINE)
    api.failed_with("resume-video", "generation_timeout")
    resumed_at = min(r.at for r in fakes.pika.requests_for("job") if r.at > stopped_at)
    gave_up_at = fakes.game.callbacks_for("resume-video")[0].at
    assert gave_up_at >= submitted_at + RESUME_DEADLINE - 0.5
    # A deadline restarted at the resume would run RESUME_DEADLINE past it.
    assert gave_up_at - resumed_at < RESUME_DEADLINE - 2, (submitted_at, resumed_at, gave_up_at)
    assert len(fakes.pika.requests_for("generate")) == 1
    assert record["provider"]["job_id"] in fakes.pika.jobs


def test_caption_timeout_runs_from_the_saved_caption_start_after_a_restart(api, redis, fakes, start_process) -> None:
    """A request whose worker stopped while captioning gives up CAPTION_TIMEOUT after captioning began,
    on the same prediction, not CAPTION_TIMEOUT after the replacement worker picked it up."""
    fakes.replicate.outcome = "never"
    timings = {"CAPTION_TIMEOUT": str(RESUME_DEADLINE)}
    leaving = start_process("worker", **timings)
    api.submit("resume-caption", expect=202)
    wait_for(lambda: stored(redis, "resume-caption", "prediction_id"), timeout=20, message="the prediction id")
    started_at = float(stored(redis, "resume-caption", "caption_started_at"))
    leaving.signal(signal.SIGTERM)
    leaving.proc.wait(timeout=15)
    stopped_at = time.time()
    time.sleep(max(0.0, started_at + RESUME_AT - time.time()))
    start_process("worker", **timings)
    api.settled("resume-caption", timeout=RESUME_AT + 2 * RESUME_DEADLINE)
    api.failed_with("resume-caption", "caption_failed")
    resumed_at = min(r.at for r in fakes.replicate.requests_for("get") if r.at > stopped_at)
    gave_up_at = fakes.game.callbacks_for("resume-caption")[0].at
    assert gave_up_at >= started_at + RESUME_DEADLINE - 0.5
    assert gave_up_at - resumed_at < RESUME_DEADLINE - 2, (started_at, resumed_at, gave_up_at)
    assert len(fakes.replicate.creates) == 1


# -- Pika settings on the wire -----------------------------------------------------------------------


def test_every_pika_setting_reaches_the_generate_body(api, fakes, start_process) -> None:
    """PIKA_MODEL, PIKA_FRAME_RATE, PIKA_ASPECT_RATIO, PIKA_NEGATIVE_PROMPT, PIKA_MOTION and
    PIKA_GUIDANCE_SCALE all land where the contract puts them, numbers as JSON numbers."""
    start_process(
        "worker",
        PIKA_MODEL="1.0",
        PIKA_FRAME_RATE="12",
        PIKA_ASPECT_RATIO="9:16",
        PIKA_NEGATIVE_PROMPT="blurry, watermark",
        PIKA_MOTION="3",
        PIKA_GUIDANCE_SCALE="12.5",
    )
    api.submit("pika-options", expect=202)
    assert api.settled("pika-options")["status"] == "completed"
    [generate] = fakes.pika.generates
    assert generate["model"] == "1.0"
    assert generate["options"] == {
        "frameRate": 12,
        "aspectRatio": "9:16",
        "parameters": {"motion": 3, "guidanceScale": 12.5, "negativePrompt": "blurry, watermark"},
    }
    parameters = generate["options"]["parameters"]
    assert type(generate["options"]["frameRate"]) is int
    assert type(parameters["motion"]) is int
    assert type(parameters["guidanceScale"]) is float
    api.one_callback("pika-options")


# -- callback delivery -------------------------------------------------------------------------------


def test_callback_is_sent_as_application_json(api, fakes, worker) -> None:
    """Every callback attempt says ``Content-Type: application/json``."""
    fakes.game.add_fault("callback", Fault.error(500))
    api.submit("cb-json", expect=202)
    assert api.settled("cb-json")["callback"]["status"] == "delivered"
    attempts = fakes.game.requests_for("callback")
    assert len(attempts) == 2
    assert [a.headers.get("content-type") for a in attempts] == ["application/json"] * 2


@pytest.mark.parametrize(
    ("delays", "retry_after"),
    [("1,1", 4), ("4,4", 1)],
    ids=["retry-after-lengthens", "retry-after-never-shortens"],
)
def test_callback_retry_waits_the_longer_of_its_delay_and_retry_after(
    api, fakes, start_process, delays: str, retry_after: int
) -> None:
    """The next attempt waits max(CALLBACK_RETRY_DELAYS step, Retry-After): 4 s either way.

    4 s against 1 s is a gap that the scheduler's 1-second tick cannot blur.
    """
    fakes.game.add_fault("callback", Fault.error(503, retry_after=retry_after))
    start_process("worker", CALLBACK_RETRY_DELAYS=delays)
    api.submit("cb-wait", expect=202)
    record = api.settled("cb-wait", timeout=30)
    assert record["callback"]["status"] == "delivered"
    first, second = fakes.game.requests_for("callback")
    assert second.at - first.at >= 3.9
    assert len(fakes.game.callbacks_for("cb-wait")) == 1


def test_callback_retry_is_never_scheduled_before_its_delay(api, redis, fakes, settings) -> None:
    """RQ's scheduler keeps whole seconds: the retry's slot is rounded up, never down, so it never comes early."""
    fakes.game.add_fault("callback", Fault.error(503, retry_after=4))
    api.submit("cb-schedule", expect=202)
    ctx = build_context(settings, redis)
    key = RequestIdentity("", "cb-schedule").record_key
    ctx.store.finish(key, "failed", error_code="internal_error", error_message="for the test")
    before = time.time()
    attempt_delivery(ctx, key, 1)
    registry = ScheduledJobRegistry(queue=ctx.queue)
    slot = redis.zscore(registry.key, RequestIdentity("", "cb-schedule").delivery_job_id(2))
    assert slot is not None, "no retry was scheduled"
    assert slot >= before + 4
    assert stored(redis, "cb-schedule", "callback_next_attempt_at") >= iso_utc(before + 4)
