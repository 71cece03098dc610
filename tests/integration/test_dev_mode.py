"""Development mode: the built-in callback receiver, the sample image, and the ``flask i2v`` commands."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from PIL import Image

from config import settings_from
from i2v_app import create_app
from launch import free_port
from tests.api import HttpApi
from tests.fakes.files import probe
from tests.helpers import DEV, HTTP_TIMEOUT, start_dev_service, wait_for, wait_until_serving


@pytest.fixture
def dev_env(service_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Development settings on the test Redis, media under tmp_path."""
    return {**service_env, **DEV, "MEDIA_DIR": str(tmp_path / "media"), "PUBLIC_BASE_URL": "http://127.0.0.1:9"}


def make_app(env: dict[str, str]) -> Flask:
    app = create_app(settings_from(env))
    app.config["TESTING"] = True
    return app


# -- routes -------------------------------------------------------------------------------------------


def test_dev_receiver_keeps_every_callback_with_request_id_headers_and_body(dev_env: dict[str, str]) -> None:
    """POST /dev/callbacks/<id> answers 200; GET /dev/callbacks lists deliveries oldest first."""
    client = make_app(dev_env).test_client()
    assert client.get("/dev/callbacks").get_json() == []
    body = {"data": {"addToInventory": False, "status": "FAILED", "output": None}}
    first = client.post(
        "/dev/callbacks/game:42",
        json=body,
        headers={"webhook-id": "msg_1", "x-api-key": "never-shown", "X-Noise": "dropped"},
    )
    assert first.status_code == 200
    assert client.post("/dev/callbacks/plain-text", data=b"not json", content_type="text/plain").status_code == 200
    entries = client.get("/dev/callbacks").get_json()
    assert [e["request_id"] for e in entries] == ["game:42", "plain-text"]
    assert entries[0]["body"] == body
    assert entries[0]["headers"]["Webhook-Id"] == "msg_1"
    assert entries[0]["headers"]["Content-Type"] == "application/json"
    assert entries[0]["api_key_sent"] is True
    assert "never-shown" not in json.dumps(entries)
    assert "X-Noise" not in entries[0]["headers"]
    assert entries[1]["body"] == "not json"
    assert entries[1]["api_key_sent"] is False
    assert all(e["received_at"] for e in entries)


def test_dev_sample_image_is_a_png(dev_env: dict[str, str]) -> None:
    """/dev/sample.png is a real PNG picture."""
    resp = make_app(dev_env).test_client().get("/dev/sample.png")
    assert resp.status_code == 200
    assert resp.mimetype == "image/png"
    image = Image.open(io.BytesIO(resp.data))
    assert image.format == "PNG"
    assert image.size[0] > image.size[1] >= 64


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/dev/callbacks"), ("POST", "/dev/callbacks/abc"), ("GET", "/dev/sample.png")],
)
def test_dev_routes_are_404_in_production(service_env: dict[str, str], method: str, path: str) -> None:
    """Without I2V_ENV=development the receiver and the sample image do not exist."""
    client = make_app({**service_env, "I2V_ENV": "production"}).test_client()
    assert client.open(path, method=method, json={}).status_code == 404


# -- a worker calling back into the web process -------------------------------------------------------


def test_worker_calls_back_into_the_dev_receiver_of_a_real_web_process(
    start_process, dev_env: dict[str, str], tmp_path: Path
) -> None:
    """gunicorn + worker in development: the sample image becomes a video, and the callback lands at /dev/callbacks."""
    base = start_dev_service(start_process, tmp_path)
    request_id = "dev:cb~1"
    api = HttpApi(base, timeout=HTTP_TIMEOUT)
    api.submit(request_id, base + "/dev/sample.png", expect=202)

    def delivered() -> list[dict[str, Any]]:
        entries = requests.get(base + "/dev/callbacks", timeout=HTTP_TIMEOUT).json()
        return [e for e in entries if e["request_id"] == request_id]

    [entry] = wait_for(delivered, timeout=20, interval=0.2, message="the callback at /dev/callbacks")
    data = entry["body"]["data"]
    assert data["status"] == "COMPLETED", entry
    assert entry["api_key_sent"] is False
    assert entry["headers"]["Webhook-Id"].startswith("msg_")
    assert re.fullmatch(re.escape(base) + r"/media/[0-9a-f]{40}\.mp4", data["output"]["url"])
    video = requests.get(data["output"]["url"], timeout=HTTP_TIMEOUT)
    assert video.status_code == 200
    assert video.headers["Content-Type"] == "video/mp4"
    assert probe(video.content).codec == "h264"
    record = api.record(request_id)
    assert record["callback"]["status"] == "delivered"
    assert record["title"] == data["output"]["title"]


# -- flask i2v ... ------------------------------------------------------------------------------------


@pytest.fixture
def dev_runner(dev_env: dict[str, str]):
    return make_app(dev_env).test_cli_runner()


@pytest.fixture
def sample_url(start_process, dev_env: dict[str, str], tmp_path: Path) -> str:
    """The sample image served by a real development web process (a URL a worker can download)."""
    port = free_port()
    env = {**DEV, "MEDIA_DIR": dev_env["MEDIA_DIR"]}
    web = start_process("web", HOST="127.0.0.1", PORT=str(port), XDG_RUNTIME_DIR=str(tmp_path), **env)
    base = f"http://127.0.0.1:{port}"

    wait_until_serving(web, base + "/dev/sample.png")
    return base + "/dev/sample.png"


def test_cli_submit_creates_a_request(dev_runner, redis) -> None:
    """`flask i2v submit URL --request-id X` stores a queued request; `status` prints it."""
    url = "http://127.0.0.1:9/image.png"
    out = dev_runner.invoke(args=["i2v", "submit", url, "--request-id", "cli-sub"])
    assert out.exit_code == 0, out.output
    assert "submitted: cli-sub" in out.output
    status = dev_runner.invoke(args=["i2v", "status", "cli-sub"])
    assert status.exit_code == 0, status.output
    record = json.loads(status.output)
    assert (record["request_id"], record["image_url"], record["status"]) == ("cli-sub", url, "queued")
    again = dev_runner.invoke(args=["i2v", "submit", url, "--request-id", "cli-sub"])
    assert again.exit_code == 0 and "already known: cli-sub" in again.output
    other = dev_runner.invoke(args=["i2v", "submit", "http://127.0.0.1:9/other.png", "--request-id", "cli-sub"])
    assert other.exit_code != 0 and "different image" in other.output


def test_cli_submit_without_request_id_makes_one(dev_runner, redis) -> None:
    """Without --request-id a fresh id is chosen and printed."""
    out = dev_runner.invoke(args=["i2v", "submit", "http://127.0.0.1:9/a.png"])
    assert out.exit_code == 0, out.output
    assert re.search(r"submitted: cli-[0-9a-f]{12}", out.output)


@pytest.mark.parametrize(
    "url",
    ["not a url", "ftp://127.0.0.1/a.png", "http://10.0.0.1/a.png", "http://localhost/a.png", ""],
)
def test_cli_submit_refuses_an_invalid_url_with_a_message(dev_runner, redis, url: str) -> None:
    """A URL the API would refuse exits non-zero with 'invalid input' and creates nothing."""
    out = dev_runner.invoke(args=["i2v", "submit", url, "--request-id", "cli-bad"])
    assert out.exit_code != 0
    assert "invalid input" in out.output
    assert dev_runner.invoke(args=["i2v", "status", "cli-bad"]).exit_code != 0


def test_cli_submit_refuses_an_invalid_request_id(dev_runner, redis) -> None:
    """A request id the API would refuse exits non-zero with a message."""
    out = dev_runner.invoke(args=["i2v", "submit", "http://127.0.0.1:9/a.png", "--request-id", "bad id/1"])
    assert out.exit_code != 0
    assert "invalid input" in out.output


def test_cli_submit_wait_finishes_and_list_shows_it(
    dev_runner, start_process, dev_env: dict[str, str], sample_url: str
) -> None:
    """`submit --wait` with a worker running ends with the completed record; `list --status completed` shows it."""
    start_process("worker", **dev_env)
    out = dev_runner.invoke(args=["i2v", "submit", sample_url, "--request-id", "cli-wait", "--wait"])
    assert out.exit_code == 0, out.output
    assert "submitted: cli-wait" in out.output
    record = json.loads(out.output[out.output.index("{") :])
    assert record["status"] == "completed", record
    assert record["video_url"].endswith(".mp4")
    assert "queued" in out.output[: out.output.index("{")]  # the progress bar's first label

    listed = dev_runner.invoke(args=["i2v", "list", "--status", "completed"])
    assert listed.exit_code == 0, listed.output
    assert "cli-wait" in listed.output
    assert "completed" in listed.output
    queued = dev_runner.invoke(args=["i2v", "list", "--status", "queued"])
    assert "cli-wait" not in queued.output
