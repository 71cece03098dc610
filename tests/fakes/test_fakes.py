"""Checks of the fakes themselves, with the official Replicate client and plain ``requests``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import replicate
import requests
from replicate.exceptions import ModelError, ReplicateError

from tests.helpers import wait_for

from . import CLIP_MODEL_ID, CLIP_VERSION, DEFAULT_CAPTION, FakeGame, FakePika, FakeReplicate, Fault

IMAGE = "https://cdn.example.com/a.jpg"
PARAMS = {"motion": 2, "guidanceScale": 16}
CLIP_INPUT = {"image": IMAGE, "clip_model_name": "ViT-L-14/openai", "mode": "best"}
TERMINAL = ("succeeded", "failed", "canceled")
FAILED_CALLBACK = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}
COMPLETED_CALLBACK = {
    "data": {
        "addToInventory": True,
        "status": "COMPLETED",
        "output": {"title": "Plane fly", "type": "MEDIA", "category": "MARKETING_VIDEO", "url": "https://v/x.mp4"},
    }
}


@pytest.fixture
def fake_replicate() -> Iterator[FakeReplicate]:
    with FakeReplicate(duration=0.1) as fake:
        yield fake


@pytest.fixture
def fake_pika() -> Iterator[FakePika]:
    with FakePika(duration=0.15) as fake:
        yield fake


@pytest.fixture
def fake_game() -> Iterator[FakeGame]:
    with FakeGame() as fake:
        yield fake


def client_for(fake: FakeReplicate, token: str = "r8_test") -> replicate.Client:
    client = replicate.Client(api_token=token, base_url=fake.url)
    client.poll_interval = 0.02
    return client


def pika_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "promptText": "a plane flying over the sea",
        "model": "1.5",
        "image": IMAGE,
        "options": {"frameRate": 24, "parameters": {"motion": 2, "guidanceScale": 16}},
    }
    body.update(overrides)
    return body


def pika_headers(token: str = "pika_test") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_generate(fake: FakePika, body: Any, token: str = "pika_test") -> requests.Response:
    return requests.post(f"{fake.base_url}/generate", json=body, headers=pika_headers(token), timeout=5)


# -- Replicate -----------------------------------------------------------------------------------


def test_replicate_run_returns_the_caption(fake_replicate: FakeReplicate) -> None:
    output = client_for(fake_replicate).run(CLIP_MODEL_ID, input=CLIP_INPUT)

    assert output == DEFAULT_CAPTION
    assert fake_replicate.creates == [CLIP_INPUT]
    create = fake_replicate.requests_for("create")[0]
    assert create.headers["prefer"] == "wait"
    assert create.headers["Authorization"] == "Bearer r8_test"
    assert create.json == {"version": CLIP_VERSION, "input": CLIP_INPUT}
    assert len(fake_replicate.requests_for("version")) == 1
    assert fake_replicate.errors == []


def test_replicate_create_then_reload_walks_the_lifecycle(fake_replicate: FakeReplicate) -> None:
    prediction = client_for(fake_replicate).predictions.create(version=CLIP_VERSION, input=CLIP_INPUT)
    assert prediction.status == "starting"
    assert prediction.urls is not None
    assert prediction.urls["get"] == f"{fake_replicate.url}/v1/predictions/{prediction.id}"

    seen = [prediction.status]
    deadline = time.monotonic() + 3
    while prediction.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.01)
        prediction.reload()
        seen.append(prediction.status)

    assert prediction.status == "succeeded"
    assert prediction.output == DEFAULT_CAPTION
    assert "processing" in seen
    assert prediction.completed_at is not None


def test_replicate_failed_prediction_raises_model_error(fake_replicate: FakeReplicate) -> None:
    fake_replicate.outcome = "failed"

    with pytest.raises(ModelError) as excinfo:
        client_for(fake_replicate).run(CLIP_MODEL_ID, input=CLIP_INPUT)

    assert excinfo.value.prediction.error == "some model error"


def test_replicate_throttled_create_raises_replicate_error(fake_replicate: FakeReplicate) -> None:
    fake_replicate.add_fault("create", Fault(status=429))

    with pytest.raises(ReplicateError) as excinfo:
        client_for(fake_replicate).run(CLIP_MODEL_ID, input=CLIP_INPUT)

    assert excinfo.value.status == 429
    assert excinfo.value.detail is not None and "throttled" in excinfo.value.detail
    assert fake_replicate.creates == []
    # The fault was used once; the next create goes through.
    assert client_for(fake_replicate).run(CLIP_MODEL_ID, input=CLIP_INPUT) == DEFAULT_CAPTION


def test_replicate_client_retries_a_throttled_get(fake_replicate: FakeReplicate) -> None:
    client = client_for(fake_replicate)
    prediction = client.predictions.create(version=CLIP_VERSION, input=CLIP_INPUT)
    fake_replicate.add_fault("get", Fault.throttled(retry_after=0), times=2)

    prediction.reload()

    assert len(fake_replicate.requests_for("get")) == 3


def test_replicate_errors_are_rfc7807(fake_replicate: FakeReplicate) -> None:
    url = f"{fake_replicate.url}/v1/predictions"
    auth = {"Authorization": "Bearer r8_test"}

    unauthorized = requests.post(url, json={"version": CLIP_VERSION, "input": CLIP_INPUT}, timeout=5)
    unknown = {"version": "0" * 64, "input": CLIP_INPUT}
    unknown_version = requests.post(url, json=unknown, headers=auth, timeout=5)
    no_input = requests.post(url, json={"version": CLIP_VERSION}, headers=auth, timeout=5)
    bad_mode = requests.post(
        url, json={"version": CLIP_VERSION, "input": {**CLIP_INPUT, "mode": "slow"}}, headers=auth, timeout=5
    )
    missing = requests.get(f"{url}/nope", headers=auth, timeout=5)

    for resp, status in (
        (unauthorized, 401),
        (unknown_version, 422),
        (no_input, 422),
        (bad_mode, 422),
        (missing, 404),
    ):
        assert resp.status_code == status
        assert {"type", "title", "status", "detail"} <= resp.json().keys()
        assert resp.json()["status"] == status
    with pytest.raises(ReplicateError) as excinfo:
        client_for(fake_replicate, token="wrong").run(CLIP_MODEL_ID, input=CLIP_INPUT)
    assert excinfo.value.status == 401
    assert fake_replicate.creates == []


def test_replicate_wait_expiry_answers_starting_and_cancel_works(fake_replicate: FakeReplicate) -> None:
    fake_replicate.outcome = "never"
    fake_replicate.max_wait = 0.1
    client = client_for(fake_replicate)

    started = time.monotonic()
    prediction = client.predictions.create(version=CLIP_VERSION, input=CLIP_INPUT, wait=5)
    assert time.monotonic() - started < 2
    assert prediction.status == "starting"
    assert fake_replicate.prediction(prediction.id)["status"] == "processing"

    prediction.cancel()
    prediction.reload()

    assert prediction.status == "canceled"
    assert fake_replicate.cancels == [prediction.id]


def test_replicate_queued_plans_apply_in_order(fake_replicate: FakeReplicate) -> None:
    fake_replicate.queue_plan("empty", duration=0.05)
    fake_replicate.queue_plan(output="a cat on a sofa", duration=0.05)
    client = client_for(fake_replicate)

    outputs = [client.run(CLIP_MODEL_ID, input=CLIP_INPUT) for _ in range(3)]

    assert outputs == ["", "a cat on a sofa", DEFAULT_CAPTION]
    assert [p["status"] for p in fake_replicate.predictions.values()] == ["succeeded"] * 3


# -- Pika ----------------------------------------------------------------------------------------


def test_pika_generate_then_poll_until_finished(fake_pika: FakePika) -> None:
    resp = post_generate(fake_pika, pika_body())
    assert resp.status_code == 200
    job_id = resp.json()["job"]["id"]
    assert resp.json()["job"]["status"] == "queued"

    def poll() -> dict[str, Any] | None:
        reply = requests.get(f"{fake_pika.base_url}/jobs/{job_id}", headers=pika_headers(), timeout=5).json()
        statuses.append(reply["videos"][0]["status"])
        return reply if reply["videos"][0]["status"] == "finished" else None

    statuses: list[str] = []
    reply = wait_for(poll, timeout=3, interval=0.02)

    video = reply["videos"][0]
    assert video["resultUrl"].startswith("https://cdn.pika.art/v1/")
    assert video["resultUrl"].endswith("/Plane_fly_seed3183047765.mp4")
    assert video["progress"] == 100
    assert {"queued", "pending"} & set(statuses[:-1])
    assert all(s in ("queued", "pending", "finished") for s in statuses)
    assert fake_pika.polls[job_id] == len(statuses)
    assert fake_pika.generates == [pika_body()]


@pytest.mark.parametrize(
    "body",
    [
        pika_body(options={"frameRate": "24", "parameters": {"motion": 2, "guidanceScale": 16}}),
        pika_body(options={"frameRate": 24, "parameters": {"motion": "2", "guidanceScale": 16}}),
        pika_body(options={"frameRate": 24, "parameters": {"motion": 2, "guidanceScale": 30}}),
        pika_body(model=1.5),
        pika_body(aspectRatio="16:9"),
        pika_body(options={"frameRate": 24, "aspectRatio": "2:1", "parameters": PARAMS}),
    ],
    ids=[
        "frameRate-str",
        "motion-str",
        "guidance-range",
        "model-number",
        "aspect-top-level",
        "aspect-unknown",
    ],
)
def test_pika_rejects_invalid_bodies(fake_pika: FakePika, body: dict[str, Any]) -> None:
    resp = requests.post(f"{fake_pika.base_url}/generate", json=body, headers=pika_headers(), timeout=5)

    assert resp.status_code == 400
    assert resp.json()["error"]
    assert fake_pika.generates == []
    assert len(fake_pika.rejected_generates) == 1


def test_pika_auth_unknown_job_and_failed_outcome(fake_pika: FakePika) -> None:
    base = fake_pika.base_url
    assert post_generate(fake_pika, pika_body(), token="x").status_code == 401
    assert requests.get(f"{base}/jobs/unknown", headers=pika_headers(), timeout=5).status_code == 404

    fake_pika.queue_plan("failed", duration=0.0)
    job_id = post_generate(fake_pika, pika_body()).json()["job"]["id"]
    video = requests.get(f"{base}/jobs/{job_id}", headers=pika_headers(), timeout=5).json()["videos"][0]

    assert video["status"] == "failed"
    assert video["resultUrl"] is None


# -- GAME ----------------------------------------------------------------------------------------


def test_flaky_faults_hit_about_their_share_and_repeat_with_their_seed(fake_game: FakeGame) -> None:
    url = f"{fake_game.url}/requests/r1/callback"

    body = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}

    def statuses(n: int) -> list[int]:
        return [requests.post(url, json=body, timeout=5).status_code for _ in range(n)]

    fake_game.require_key = False
    fake_game.add_flaky_fault("callback", Fault.error(503), probability=0.3, seed=7)
    first = statuses(200)
    fake_game.clear_faults()
    fake_game.add_flaky_fault("callback", Fault.error(503), probability=0.3, seed=7)
    second = statuses(200)
    fake_game.clear_faults()

    assert set(first) == {200, 503}
    assert 30 <= first.count(503) <= 90, first.count(503)
    assert first == second
    assert len(fake_game.callbacks) == first.count(200) + second.count(200)
    assert statuses(20) == [200] * 20
    with pytest.raises(ValueError):
        fake_game.add_flaky_fault("callback", Fault.error(503), probability=1.5)


def test_game_records_callbacks_and_rejects_wrong_keys(fake_game: FakeGame) -> None:
    body = {
        "data": {
            "addToInventory": True,
            "status": "COMPLETED",
            "output": {
                "title": "Plane fly",
                "type": "MEDIA",
                "category": "MARKETING_VIDEO",
                "url": "https://v/x.mp4",
            },
        }
    }
    ok = requests.post(
        f"{fake_game.url}/requests/req%2F1/callback", json=body, headers={"x-api-key": "game_test"}, timeout=5
    )
    templated = requests.post(
        fake_game.callback_url_template().format(request_id="req-2"),
        json={"data": {"addToInventory": False, "status": "FAILED", "output": None}},
        headers={"x-api-key": "game_test"},
        timeout=5,
    )
    wrong_key = requests.post(
        f"{fake_game.url}/requests/req-3/callback", json=body, headers={"x-api-key": "nope"}, timeout=5
    )

    assert (ok.status_code, templated.status_code, wrong_key.status_code) == (200, 200, 401)
    first, second = fake_game.wait_for_callbacks(2, timeout=1)
    assert (first.request_id, first.title, first.problems()) == ("req/1", "Plane fly", [])
    assert (second.request_id, second.status, second.problems()) == ("req-2", "FAILED", [])
    assert [c.request_id for c in fake_game.rejected] == ["req-3"]


def test_game_checks_standard_webhooks_signatures() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    with FakeGame(signing_secret=secret) as game:
        raw = json.dumps({"data": {"addToInventory": False, "status": "FAILED", "output": None}}).encode()
        ts = str(int(time.time()))
        digest = hmac.new(b"k" * 24, f"msg_1.{ts}.".encode() + raw, hashlib.sha256).digest()
        sig = base64.b64encode(digest).decode()
        headers = {"x-api-key": "game_test", "Content-Type": "application/json", "webhook-id": "msg_1"}
        headers["webhook-timestamp"] = ts
        for signature in (f"v1,{sig}", "v1,bad"):
            headers["webhook-signature"] = signature
            requests.post(f"{game.url}/requests/r/callback", data=raw, headers=headers, timeout=5)

        assert [c.signature_valid for c in game.callbacks] == [True, False]


def test_replicate_delivers_signed_webhooks_locally(fake_replicate: FakeReplicate) -> None:
    secret = "whsec_" + base64.b64encode(b"s" * 24).decode()
    fake_replicate.deliver_webhooks = True
    fake_replicate.webhook_secret = secret
    with FakeGame(require_key=False, check_body=False, signing_secret=secret) as game:
        client_for(fake_replicate).predictions.create(
            version=CLIP_VERSION,
            input=CLIP_INPUT,
            webhook=game.callback_url_template().format(request_id="p1"),
        )
        (delivered,) = game.wait_for_callbacks(1, timeout=3)

    assert delivered.json["status"] == "succeeded"
    assert delivered.json["output"] == DEFAULT_CAPTION
    assert delivered.signature_valid is True


# -- faults --------------------------------------------------------------------------------------


def test_reset_fault_drops_the_connection(fake_game: FakeGame) -> None:
    fake_game.add_fault("callback", Fault.connection_reset())
    url = f"{fake_game.url}/requests/r1/callback"

    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(url, json=FAILED_CALLBACK, headers={"x-api-key": "game_test"}, timeout=5)
    assert len(fake_game.requests_for("callback")) == 1
    assert fake_game.callbacks == []

    retried = requests.post(url, json=FAILED_CALLBACK, headers={"x-api-key": "game_test"}, timeout=5)
    assert retried.status_code == 200


def test_delay_status_and_malformed_faults(fake_pika: FakePika, fake_game: FakeGame) -> None:
    fake_game.add_fault("callback", Fault.slow(0.5))
    fake_game.add_fault("callback", Fault(status=503, headers={"Retry-After": "1"}, delay=0.05))
    url = f"{fake_game.url}/requests/r1/callback"
    headers = {"x-api-key": "game_test"}

    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(url, json=FAILED_CALLBACK, headers=headers, timeout=0.1)
    unavailable = requests.post(url, json=FAILED_CALLBACK, headers=headers, timeout=5)
    assert (unavailable.status_code, unavailable.headers["Retry-After"]) == (503, "1")

    fake_pika.add_fault("job", Fault.garbage("invalid_json"))
    fake_pika.add_fault("job", Fault.garbage("wrong_shape"))
    job_url = f"{fake_pika.base_url}/jobs/any"
    invalid = requests.get(job_url, headers=pika_headers(), timeout=5)
    with pytest.raises(ValueError):
        invalid.json()
    wrong = requests.get(job_url, headers=pika_headers(), timeout=5)
    assert wrong.status_code == 200 and "videos" not in wrong.json()
    assert requests.get(job_url, headers=pika_headers(), timeout=5).status_code == 404


def test_forever_faults_last_until_reset(fake_pika: FakePika) -> None:
    fake_pika.add_fault("generate", Fault.error(500), times=None)
    url = f"{fake_pika.base_url}/generate"

    statuses = [post_generate(fake_pika, pika_body()).status_code for _ in range(3)]
    fake_pika.reset()

    assert statuses == [500, 500, 500]
    assert fake_pika.requests == []
    assert requests.post(url, json=pika_body(), headers=pika_headers(), timeout=5).status_code == 200


# -- strictness: each check below is one rule of the contracts that the fakes enforce -------------


def test_replicate_accepts_only_bearer_tokens(fake_replicate: FakeReplicate) -> None:
    url = f"{fake_replicate.url}/v1/predictions"
    body = {"version": CLIP_VERSION, "input": CLIP_INPUT}

    legacy = requests.post(url, json=body, headers={"Authorization": "Token r8_test"}, timeout=5)
    bearer = requests.post(url, json=body, headers={"Authorization": "Bearer r8_test"}, timeout=5)

    assert (legacy.status_code, bearer.status_code) == (401, 201)
    assert len(fake_replicate.creates) == 1


def test_replicate_throttle_fault_is_problem_json_with_the_reset_detail(fake_replicate: FakeReplicate) -> None:
    fake_replicate.add_fault("create", Fault(status=429))
    url = f"{fake_replicate.url}/v1/predictions"

    resp = requests.post(
        url, json={"version": CLIP_VERSION, "input": CLIP_INPUT}, headers={"Authorization": "Bearer r8_test"}, timeout=5
    )

    assert resp.status_code == 429
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert {"type", "title", "status", "detail"} <= resp.json().keys()
    assert resp.json()["status"] == 429
    assert "Your rate limit resets in ~1s." in resp.json()["detail"]
    # The contract documents only the detail; a client must not need the header.
    assert "Retry-After" not in resp.headers


def test_replicate_enforces_its_rate_limits_per_window() -> None:
    with FakeReplicate(duration=0.05, create_limit=2, other_limit=3, limit_window=30) as fake:
        auth = {"Authorization": "Bearer r8_test"}
        body = {"version": CLIP_VERSION, "input": CLIP_INPUT}
        creates = [requests.post(f"{fake.url}/v1/predictions", json=body, headers=auth, timeout=5) for _ in range(3)]
        pid = creates[0].json()["id"]
        gets = [requests.get(f"{fake.url}/v1/predictions/{pid}", headers=auth, timeout=5) for _ in range(4)]

        assert [r.status_code for r in creates] == [201, 201, 429]
        assert [r.status_code for r in gets] == [200, 200, 200, 429]
        for throttled in (creates[-1], gets[-1]):
            assert throttled.headers["Content-Type"] == "application/problem+json"
            seconds = re.search(r"resets in ~(\d+)s", throttled.json()["detail"])
            assert seconds is not None and 1 <= int(seconds.group(1)) <= 30
        assert len(fake.creates) == 2

        fake.limit_window = 0.05
        time.sleep(0.06)  # the window lapses; this wait is setup, not the assertion
        again = requests.post(f"{fake.url}/v1/predictions", json=body, headers=auth, timeout=5)
        assert again.status_code == 201


def test_replicate_removes_input_and_output_after_the_retention() -> None:
    with FakeReplicate(duration=0.05, retention=1.0) as fake:
        prediction = client_for(fake).predictions.create(version=CLIP_VERSION, input=CLIP_INPUT)
        wait_for(lambda: fake.prediction(prediction.id)["status"] == "succeeded", timeout=3)
        fresh = fake.prediction(prediction.id)
        assert (fresh["output"], fresh["input"], fresh["data_removed"]) == (DEFAULT_CAPTION, CLIP_INPUT, False)

        wait_for(lambda: fake.prediction(prediction.id)["data_removed"], timeout=3)
        prediction.reload()

    assert prediction.status == "succeeded"
    assert prediction.output is None
    assert prediction.input == {}


def test_replicate_refuses_non_json_creates_and_unknown_webhook_events(fake_replicate: FakeReplicate) -> None:
    url = f"{fake_replicate.url}/v1/predictions"
    auth = {"Authorization": "Bearer r8_test"}
    raw = json.dumps({"version": CLIP_VERSION, "input": CLIP_INPUT})

    form = requests.post(url, data=raw, headers={**auth, "Content-Type": "text/plain"}, timeout=5)
    model_url = f"{fake_replicate.url}/v1/models/pharmapsychotic/clip-interrogator/predictions"
    form_for_model = requests.post(
        model_url, data=json.dumps({"input": CLIP_INPUT}), headers={**auth, "Content-Type": "text/plain"}, timeout=5
    )
    events = requests.post(
        url,
        json={
            "version": CLIP_VERSION,
            "input": CLIP_INPUT,
            "webhook": "https://example.com/hook",
            "webhook_events_filter": ["completed", "done"],
        },
        headers=auth,
        timeout=5,
    )

    assert (form.status_code, form_for_model.status_code, events.status_code) == (415, 415, 422)
    assert events.json()["invalid_fields"][0]["field"] == "webhook_events_filter"
    assert fake_replicate.creates == []


def test_pika_refuses_a_generate_not_sent_as_json(fake_pika: FakePika) -> None:
    resp = requests.post(
        f"{fake_pika.base_url}/generate",
        data=json.dumps(pika_body()),
        headers={**pika_headers(), "Content-Type": "text/plain"},
        timeout=5,
    )

    assert resp.status_code == 400
    assert fake_pika.generates == []
    assert "Content-Type" in fake_pika.rejected_generates[0][1][0]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_game_refuses_a_callback_not_sent_as_json(fake_game: FakeGame, content_type: str | None) -> None:
    headers = {"x-api-key": "game_test"}
    if content_type:
        headers["Content-Type"] = content_type

    resp = requests.post(
        f"{fake_game.url}/requests/r1/callback", data=json.dumps(FAILED_CALLBACK), headers=headers, timeout=5
    )

    assert resp.status_code == 415
    assert fake_game.callbacks == []
    assert [c.request_id for c in fake_game.refused] == ["r1"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"data": {}}, 422),
        ({"ok": True}, 422),
        ({"data": {**FAILED_CALLBACK["data"], "addToInventory": True}}, 422),
        ({"data": {**COMPLETED_CALLBACK["data"], "output": None}}, 422),
        (
            {"data": {**COMPLETED_CALLBACK["data"], "output": {**COMPLETED_CALLBACK["data"]["output"], "type": "X"}}},
            422,
        ),
        ({**FAILED_CALLBACK, "extra": 1}, 422),
        ("not json {", 400),
    ],
    ids=[
        "empty-data",
        "other-object",
        "failed-in-inventory",
        "completed-no-output",
        "wrong-type",
        "extra-key",
        "bad-json",
    ],
)
def test_game_refuses_a_body_not_of_the_contract_shape(fake_game: FakeGame, body: Any, status: int) -> None:
    raw = body if isinstance(body, str) else json.dumps(body)
    headers = {"x-api-key": "game_test", "Content-Type": "application/json"}

    resp = requests.post(f"{fake_game.url}/requests/r1/callback", data=raw, headers=headers, timeout=5)

    assert resp.status_code == status
    assert fake_game.callbacks == []
    (refused,) = fake_game.refused
    assert refused.refusal


def test_game_accepts_both_contract_shapes_with_a_json_charset(fake_game: FakeGame) -> None:
    headers = {"x-api-key": "game_test", "Content-Type": "application/json; charset=utf-8"}
    for body in (COMPLETED_CALLBACK, FAILED_CALLBACK):
        resp = requests.post(f"{fake_game.url}/requests/r1/callback", data=json.dumps(body), headers=headers, timeout=5)
        assert resp.status_code == 200

    assert [c.status for c in fake_game.callbacks] == ["COMPLETED", "FAILED"]
    assert fake_game.refused == []
