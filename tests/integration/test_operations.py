"""Operator tools: Prometheus metrics across processes, and rq-dashboard behind the API keys."""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests

from config import settings_from
from i2v_app import create_app
from launch import free_port
from tests.helpers import wait_for

KEY = "dashboard-key-0123456789"
ADMIN = "admin-key-0123456789abcdef"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text output."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_pipeline_outcomes_stages_and_callbacks(api, client, fakes, worker) -> None:
    # HTTP counters live in this test process for all apps it made: count from here on.
    before = (
        sample(
            client.get("/metrics").get_data(as_text=True),
            "i2v_http_requests_total",
            method="POST",
            route="/api/v1/i2v",
            status="202",
        )
        or 0
    )
    api.submit("m-1", expect=202)
    api.settled("m-1")
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "i2v_jobs_total", outcome="completed") == 1
    assert sample(text, "i2v_callback_attempts_total", outcome="delivered") == 1
    assert sample(text, "i2v_stage_duration_seconds_count", stage="captioning") == 1
    assert sample(text, "i2v_stage_duration_seconds_bucket", stage="polling", le="+Inf") == 1
    assert sample(text, "i2v_queue_depth") == 0
    assert sample(text, "i2v_requests_in_flight") == 0
    assert sample(text, "i2v_http_requests_total", method="POST", route="/api/v1/i2v", status="202") == before + 1


def test_metrics_count_provider_errors_by_kind(api, client, fakes, worker) -> None:
    from tests.fakes import Fault

    fakes.pika.add_fault("job", Fault.error(503))
    api.submit("m-2", expect=202)
    api.settled("m-2")
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "i2v_provider_errors_total", provider="pika", kind="server_error") == 1


def test_http_metrics_add_up_across_gunicorn_workers(start_process, fakes) -> None:
    port = free_port()
    start_process("web", HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="3", GUNICORN_THREADS="1")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ok(base + "/healthz"), timeout=20, message="gunicorn")
    session = requests.Session()
    for _ in range(30):
        session.get(base + "/", headers={"Connection": "close"}, timeout=5)
    for _ in range(5):  # whichever worker answers the scrape, the count is the same
        text = requests.get(base + "/metrics", headers={"Connection": "close"}, timeout=5).text
        assert sample(text, "i2v_http_requests_total", method="GET", route="/", status="200") == 30


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_gunicorn_lines_follow_log_format(start_process, fakes, log_format: str) -> None:
    """gunicorn's own lines and its access line come in LOG_FORMAT, like the app's."""
    port = free_port()
    web = start_process("web", HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1", LOG_FORMAT=log_format)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ok(base + "/healthz"), timeout=20, message="gunicorn")
    wait_for(lambda: "GET /healthz" in web.output, timeout=10, message="the access line")
    lines = web.output.splitlines()
    if log_format == "text":
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z"
        assert any(re.match(rf"{stamp} INFO +gunicorn\.error Listening at", line) for line in lines), lines
        pattern = rf'{stamp} INFO +gunicorn\.access 127\.0\.0\.1 "GET /healthz HTTP/1\.1" 200 \d+ bytes \d+ ms'
        assert any(re.fullmatch(pattern, line) for line in lines), lines
        assert not [line for line in lines if line.startswith("{")]
    else:
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        assert any(e.get("logger") == "gunicorn.error" and "Listening at" in e["message"] for e in entries)
        assert any(e.get("status") == 200 and e.get("request") == "GET /healthz HTTP/1.1" for e in entries)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_rq_dashboard_is_off_unless_enabled_and_needs_an_admin_key(service_env, redis) -> None:
    off = create_app(settings_from(service_env)).test_client()
    assert off.get("/rq/").status_code == 404
    env = {**service_env, "RQ_DASHBOARD": "1", "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": KEY, "I2V_ADMIN_KEYS": ADMIN}
    on = create_app(settings_from(env)).test_client()
    resp = on.get("/rq/")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    basic = base64.b64encode(f"ops:{ADMIN}".encode()).decode()
    assert on.get("/rq/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert on.get("/rq/", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    # An API key is a tenant's credential, not an operator's: it must not open every tenant's jobs.
    api_basic = base64.b64encode(f"ops:{KEY}".encode()).decode()
    assert on.get("/rq/", headers={"Authorization": f"Basic {api_basic}"}).status_code == 401
    assert on.get("/rq/", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401
    wrong = base64.b64encode(b"ops:nope").decode()
    assert on.get("/rq/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
