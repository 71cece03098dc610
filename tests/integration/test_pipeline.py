"""The pipeline on a real RQ worker (the Procfile's command) and a real Redis, against the fakes."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from tests.fakes import Fault
from tests.helpers import completed_callback, wait_for

PLAIN = "https://cdn.example.com/images/plane.jpg"
ESCAPED = "https:&#x2F;&#x2F;cdn.example.com&#x2F;images&#x2F;plane.jpg"


def test_happy_path_calls_back_once_with_the_video(api, fakes, worker) -> None:
    api.submit("happy", ESCAPED, expect=202)
    record = api.settled("happy")
    assert record["status"] == "completed"
    body = api.one_callback("happy")
    assert body == completed_callback(record["video_url"])
    assert record["video_url"].endswith("/Plane_fly_seed3183047765.mp4")
    # The escaped URL reached both providers unescaped, with the contract's inputs.
    assert fakes.replicate.creates == [{"image": PLAIN, "clip_model_name": "ViT-L-14/openai", "mode": "best"}]
    [generate] = fakes.pika.generates
    assert generate["image"] == PLAIN
    assert generate["promptText"] == record["prompt"]
    assert generate["model"] == "1.5"
    assert generate["options"] == {"frameRate": 24, "parameters": {"motion": 2, "guidanceScale": 16}}
    callback = fakes.game.callbacks_for("happy")[0]
    assert callback.headers["x-api-key"] == "game_test_key_0123456789"
    assert callback.headers["webhook-id"].startswith("msg_")
    [attempt] = record["callback"].pop("history")
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert record["callback"] == {
        "status": "delivered",
        "attempts": 1,
        "last_status_code": 200,
        "next_attempt_at": None,
    }
    assert set(record["stages"]) >= {"captioning", "submitting", "polling", "delivering"}
    assert record["error"] is None


def test_worker_logs_carry_request_id_and_duration_but_no_secrets(api, fakes, worker) -> None:
    api.submit("logged", expect=202)
    api.settled("logged")
    lines = [json.loads(line) for line in worker.output.splitlines() if line.startswith("{")]
    steps = [line for line in lines if line.get("request_id") == "logged" and "duration_ms" in line]
    assert {line["message"] for line in steps} >= {"captioning ended", "submitting ended", "polling ended"}
    for secret in ("r8_test_token_0123456789", "pika_test_token_0123456789", "game_test_key_0123456789"):
        assert secret not in worker.output


def test_a_worker_with_text_logs_writes_readable_lines_with_request_id_and_stage(api, fakes, start_process) -> None:
    """LOG_FORMAT=text: our lines and RQ's own carry no JSON; ours name the request and its stage."""
    worker = start_process("worker", LOG_FORMAT="text")
    api.submit("readable", expect=202)
    api.settled("readable")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z"
    line = wait_for(
        lambda: re.search(
            rf"^{stamp} INFO +jobs\.pipeline polling ended request_id=readable stage=polling .*duration_ms=\S+",
            worker.output,
            re.MULTILINE,
        ),
        timeout=10,
        message="the text line of the polling step",
    )
    assert line
    # RQ's own lines, of the pool and of its workers, go through the same formatter.
    assert re.search(rf"^{stamp} INFO +rq\.worker_pool Starting worker pool", worker.output, re.MULTILINE)
    assert re.search(rf"^{stamp} INFO +rq\.worker .*Job OK", worker.output, re.MULTILINE), worker.output
    assert not [line for line in worker.output.splitlines() if line.startswith("{")]
    for secret in ("r8_test_token_0123456789", "pika_test_token_0123456789", "game_test_key_0123456789"):
        assert secret not in worker.output


@pytest.mark.parametrize(
    ("outcome", "message"),
    [("failed", "failed"), ("canceled", "canceled"), ("empty", "empty")],
)
def test_caption_failures_end_in_one_failed_callback(api, fakes, worker, outcome, message) -> None:
    fakes.replicate.outcome = outcome
    api.submit(f"cap-{outcome}", expect=202)
    record = api.failed_with(f"cap-{outcome}", "caption_failed")
    assert message in record["error"]["message"]
    assert fakes.pika.generates == []


def test_replicate_throttling_is_retried_then_succeeds(api, fakes, worker) -> None:
    fakes.replicate.add_fault("create", Fault.throttled(retry_after=0.2), times=2)
    fakes.replicate.add_fault("get", Fault.error(503), times=1)
    api.submit("throttled", expect=202)
    assert api.settled("throttled")["status"] == "completed"
    assert len(fakes.replicate.creates) == 1
    api.one_callback("throttled")


def test_replicate_that_keeps_failing_gives_caption_failed(api, fakes, worker) -> None:
    fakes.replicate.add_fault("create", Fault.error(500), times=None)
    api.submit("r500", expect=202)
    api.failed_with("r500", "caption_failed")


def test_pika_refusal_is_generation_failed_at_once(api, fakes, worker) -> None:
    fakes.pika.add_fault("generate", Fault.error(400, body={"error": "bad image"}))
    api.submit("p400", expect=202)
    api.failed_with("p400", "generation_failed")
    assert len(fakes.pika.requests_for("generate")) == 1


def test_pika_5xx_is_retried_twice_then_generation_failed(api, fakes, worker) -> None:
    fakes.pika.add_fault("generate", Fault.error(502), times=None)
    api.submit("p502", expect=202)
    api.failed_with("p502", "generation_failed")
    assert len(fakes.pika.requests_for("generate")) == 3


def test_pika_429_waits_and_retries(api, fakes, worker) -> None:
    fakes.pika.add_fault("generate", Fault.throttled(retry_after=0.2), times=3)
    api.submit("p429", expect=202)
    assert api.settled("p429")["status"] == "completed"
    assert len(fakes.pika.generates) == 1
    api.one_callback("p429")


@pytest.mark.parametrize("kind", ["invalid_json", "wrong_shape"])
def test_malformed_pika_submission_reply_is_generation_failed(api, fakes, worker, kind) -> None:
    fakes.pika.add_fault("generate", Fault.garbage(kind))
    api.submit(f"pmal-{kind}", expect=202)
    api.failed_with(f"pmal-{kind}", "generation_failed")


@pytest.mark.parametrize("fault", [Fault.connection_reset(), Fault.slow(2.5)], ids=["reset", "timeout"])
def test_lost_pika_answer_is_generation_unknown_without_resubmitting(api, fakes, worker, fault) -> None:
    fakes.pika.add_fault("generate", fault)
    api.submit("punknown", expect=202)
    api.failed_with("punknown", "generation_unknown")
    assert len(fakes.pika.requests_for("generate")) == 1


@pytest.mark.parametrize("outcome", ["failed", "error"])
def test_failed_video_is_generation_failed(api, fakes, worker, outcome) -> None:
    fakes.pika.outcome = outcome
    api.submit(f"vid-{outcome}", expect=202)
    api.failed_with(f"vid-{outcome}", "generation_failed")


def test_poll_trouble_is_polled_through(api, fakes, worker) -> None:
    fakes.pika.duration = 0.8
    faults = (
        Fault.error(500),
        Fault.throttled(0.1),
        Fault.garbage("invalid_json"),
        Fault.garbage("wrong_shape"),
        Fault.connection_reset(),
        Fault.slow(2.5),  # past the read timeout
    )
    for fault in faults:
        fakes.pika.add_fault("job", fault)
    api.submit("polltrouble", expect=202)
    assert api.settled("polltrouble")["status"] == "completed"
    api.one_callback("polltrouble")


def test_generation_that_never_finishes_times_out(api, fakes, worker, settings) -> None:
    fakes.pika.outcome = "never"
    api.submit("never", expect=202)
    record = api.failed_with("never", "generation_timeout")
    polls = sum(fakes.pika.polls.values())
    # Polling starts after INITIAL_WAIT_TIME and stops at the deadline.
    assert 5 <= polls <= settings.max_check_time / settings.poll_interval + 3
    assert record["stage"] in ("delivering", None)


def test_unknown_pika_job_is_generation_failed(api, fakes, worker) -> None:
    fakes.pika.add_fault("job", Fault.error(404), times=None)
    api.submit("p404", expect=202)
    api.failed_with("p404", "generation_failed")


def test_callback_is_retried_until_acknowledged(api, fakes, worker) -> None:
    fakes.game.add_fault("callback", Fault.error(500))
    fakes.game.add_fault("callback", Fault.throttled(retry_after=0.3))
    api.submit("cbretry", expect=202)
    record = api.settled("cbretry")
    assert record["callback"]["status"] == "delivered"
    assert record["callback"]["attempts"] == 3
    attempts = fakes.game.requests_for("callback")
    assert len(attempts) == 3
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    # How long each retry waits is measured in test_failure_paths.py, with gaps a 1 s tick cannot blur.
    assert len(fakes.game.callbacks_for("cbretry")) == 1


def test_callback_gone_410_stops_at_once(api, fakes, worker) -> None:
    fakes.game.add_fault("callback", Fault.error(410), times=None)
    api.submit("cb410", expect=202)
    record = api.settled("cb410")
    assert [attempt["status_code"] for attempt in record["callback"].pop("history")] == [410]
    assert record["callback"] == {"status": "failed", "attempts": 1, "last_status_code": 410, "next_attempt_at": None}


def test_callback_runs_out_of_retries(api, fakes, worker, settings) -> None:
    fakes.game.add_fault("callback", Fault.error(503), times=None)
    api.submit("cbdead", expect=202)
    record = api.settled("cbdead")
    assert record["callback"]["status"] == "failed"
    assert record["callback"]["attempts"] == len(settings.callback_retry_delays) + 1
    assert record["status"] == "completed"


def test_pika_concurrency_cap_makes_a_burst_wait(api, fakes, start_process) -> None:
    fakes.pika.duration = 0.6
    for _ in range(3):
        start_process("worker", PIKA_MAX_CONCURRENCY="1")
    for n in range(3):
        api.submit(f"capped-{n}", expect=202)
    wait_for(lambda: len(fakes.game.callbacks) == 3, timeout=30, message="3 callbacks")
    starts = sorted(r.at for r in fakes.pika.requests_for("generate"))
    assert len(starts) == 3
    # One generation at a time: each submission waits for the previous video to be done.
    assert all(later - earlier >= 0.6 for earlier, later in itertools.pairwise(starts))
