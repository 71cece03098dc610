"""The development callback receiver, steered to answer the next deliveries with a chosen status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from config import settings_from
from i2v_app import create_app
from tests.api import HttpApi
from tests.helpers import DEV, HTTP_TIMEOUT, start_dev_service

BODY = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}


@pytest.fixture
def dev_client(service_env: dict[str, str], tmp_path: Path):
    env = {**service_env, **DEV, "MEDIA_DIR": str(tmp_path / "media"), "PUBLIC_BASE_URL": "http://127.0.0.1:9"}
    app = create_app(settings_from(env))
    app.config["TESTING"] = True
    return app.test_client()


def deliver(client, request_id: str = "r-1"):
    return client.post(f"/dev/callbacks/{request_id}", json=BODY, headers={"webhook-id": "msg_1"})


def test_the_next_n_deliveries_get_the_steered_status_then_200_again(dev_client) -> None:
    assert dev_client.get("/dev/callbacks/answers").get_json() == {"status": None, "count": 0}
    resp = dev_client.post("/dev/callbacks/answers", json={"status": 500, "count": 2})
    assert resp.status_code == 200
    assert resp.get_json() == {"status": 500, "count": 2}
    assert dev_client.get("/dev/callbacks/answers").get_json() == {"status": 500, "count": 2}
    assert [deliver(dev_client).status_code for _ in range(3)] == [500, 500, 200]
    assert dev_client.get("/dev/callbacks/answers").get_json() == {"status": None, "count": 0}
    kept = dev_client.get("/dev/callbacks").get_json()
    assert [entry["answered"] for entry in kept] == [500, 500, 200]


def test_count_defaults_to_one_and_delete_resets(dev_client) -> None:
    dev_client.post("/dev/callbacks/answers", json={"status": 410})
    assert dev_client.get("/dev/callbacks/answers").get_json() == {"status": 410, "count": 1}
    dev_client.post("/dev/callbacks/answers", json={"status": 503, "count": 5})
    assert dev_client.delete("/dev/callbacks/answers").get_json() == {"status": None, "count": 0}
    assert deliver(dev_client).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": "500"},
        {"status": 99},
        {"status": 600},
        {"status": 500, "count": 0},
        {"status": 500, "count": 1.5},
        {"status": 500, "count": 1001},
    ],
)
def test_a_bad_steering_is_a_422_problem(dev_client, body: dict[str, Any]) -> None:
    resp = dev_client.post("/dev/callbacks/answers", json=body)
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"
    assert dev_client.get("/dev/callbacks/answers").get_json()["status"] is None


def test_a_callback_for_the_request_id_answers_is_still_received(dev_client) -> None:
    assert deliver(dev_client, "answers").status_code == 200
    assert dev_client.get("/dev/callbacks").get_json()[0]["request_id"] == "answers"
    assert dev_client.get("/dev/callbacks/answers").get_json()["status"] is None


def test_steering_is_404_in_production(client) -> None:
    assert client.post("/dev/callbacks/answers", json={"status": 500}).status_code == 404
    assert client.get("/dev/callbacks/answers").status_code == 404


def test_a_steered_410_fails_the_callback_at_once_and_500_retries(start_process, tmp_path: Path) -> None:
    """A real web process and worker: what a person sees in the playground."""
    base = start_dev_service(start_process, tmp_path)
    api = HttpApi(base, timeout=HTTP_TIMEOUT)

    def run(request_id: str) -> dict[str, Any]:
        api.submit(request_id, base + "/dev/sample.png", expect=202)
        return api.settled(request_id, timeout=30)

    requests.post(base + "/dev/callbacks/answers", json={"status": 410, "count": 1}, timeout=HTTP_TIMEOUT)
    gone = run("steer-410")
    assert gone["callback"]["status"] == "failed"
    assert [entry["status_code"] for entry in gone["callback"]["history"]] == [410]
    assert api.redeliver("steer-410").status_code == 202
    again = api.settled("steer-410", timeout=30)
    assert again["callback"]["status"] == "delivered"
    assert [entry["status_code"] for entry in again["callback"]["history"]] == [410, 200]

    requests.post(base + "/dev/callbacks/answers", json={"status": 500, "count": 1}, timeout=HTTP_TIMEOUT)
    retried = run("steer-500")
    assert retried["callback"]["status"] == "delivered"
    assert [entry["status_code"] for entry in retried["callback"]["history"]] == [500, 200]
    answered = [e["answered"] for e in requests.get(base + "/dev/callbacks", timeout=HTTP_TIMEOUT).json()]
    assert answered == [410, 200, 500, 200]
