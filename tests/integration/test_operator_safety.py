"""Modes, operator surfaces and secrets: unsafe modes on public listeners, the admin console, metric
labels and what reaches logs and Redis (issue 11, items 7-11), against real processes where they live."""

from __future__ import annotations

import base64
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import requests
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result

from config import settings_from
from i2v_app import create_app
from launch import free_port
from tests.helpers import REPLICATE_TOKEN, ROOT, ServiceProcess, python_env, wait_for

ADMIN = "admin-key-0123456789abcdef"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
API_KEY = "api-key-for-safety-tests-0123"
#: A Redis password that must never appear in output; the test Redis has none, so nothing uses it.
REDIS_PASSWORD = "CANARYredisPassword0123456789"
EXIT_TIMEOUT = 40.0


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _exit_code(proc: ServiceProcess, timeout: float = EXIT_TIMEOUT) -> int:
    assert proc.proc is not None
    return proc.proc.wait(timeout=timeout)


# -- item 7: unsafe modes are refused where they are reachable -------------------------------------

UNSAFE = {
    "auth-disabled": ({"I2V_AUTH_DISABLED": "1"}, "I2V_AUTH_DISABLED=1"),
    "development": (
        {"I2V_ENV": "development", "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": API_KEY},
        "I2V_ENV=development",
    ),
}


@pytest.mark.parametrize("mode", list(UNSAFE))
def test_gunicorn_refuses_an_unsafe_mode_on_a_public_listener(start_process, tmp_path: Path, mode: str) -> None:
    """gunicorn bound to 0.0.0.0 with an unsafe mode exits non-zero, naming the settings."""
    env, named = UNSAFE[mode]
    web = start_process("web", HOST="0.0.0.0", PORT=str(free_port()), XDG_RUNTIME_DIR=str(tmp_path), **env)
    assert _exit_code(web) != 0, web.output
    assert named in web.output and "I2V_ALLOW_PUBLIC_UNSAFE" in web.output, web.output


def test_gunicorn_without_host_refuses_as_heroku_would(service_env, log_dir: Path, tmp_path: Path) -> None:
    """No HOST (Heroku) means 0.0.0.0: development mode is refused there too."""
    env = python_env({**service_env, "PORT": str(free_port()), "XDG_RUNTIME_DIR": str(tmp_path)})
    env.pop("HOST", None)
    web = ServiceProcess("web", {**env, "I2V_ENV": "development"}, log_dir).start()
    try:
        assert _exit_code(web) != 0, web.output
        assert "I2V_ENV=development" in web.output, web.output
    finally:
        web.stop()


def _serves(web: ServiceProcess, port: int) -> bool:
    """Whether ``web`` came up (polled on loopback only) instead of exiting."""
    wait_for(lambda: web.proc.poll() is not None or _healthy(f"http://127.0.0.1:{port}/healthz"), timeout=30)
    return web.proc.poll() is None


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": API_KEY}, id="production"),
        pytest.param({"I2V_ALLOW_PUBLIC_UNSAFE": "1"}, id="risk-accepted"),
    ],
)
def test_gunicorn_serves_publicly_in_production_or_when_the_risk_is_accepted(
    start_process, tmp_path: Path, env: dict[str, str]
) -> None:
    """The refusal is about the modes: production with keys, or I2V_ALLOW_PUBLIC_UNSAFE=1, starts on 0.0.0.0."""
    port = free_port()
    web = start_process("web", HOST="0.0.0.0", PORT=str(port), XDG_RUNTIME_DIR=str(tmp_path), **env)
    assert _serves(web, port), web.output


def _flask_run(service_env: dict[str, str], host: str, port: int, **extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "run", "--host", host, "--port", str(port)]
    env = python_env({**service_env, **extra})
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_flask_run_refuses_a_public_host_with_an_unsafe_mode(service_env) -> None:
    """``flask run --host 0.0.0.0`` with authentication disabled stops with a message naming the settings."""
    proc = _flask_run(service_env, "0.0.0.0", free_port())
    output, _ = proc.communicate(timeout=EXIT_TIMEOUT)
    assert proc.returncode != 0, output
    assert "I2V_AUTH_DISABLED=1" in output and "I2V_ALLOW_PUBLIC_UNSAFE" in output, output


def test_flask_run_on_loopback_starts_with_an_unsafe_mode(service_env) -> None:
    """Loopback stays open to local conveniences (what ``make run`` relies on)."""
    port = free_port()
    proc = _flask_run(service_env, "127.0.0.1", port, I2V_ENV="development")
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# -- item 8: rq-dashboard is an admin console ------------------------------------------------------


def _dashboard(service_env: dict[str, str], **extra: str):
    env = {**service_env, "RQ_DASHBOARD": "1", "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": API_KEY, **extra}
    return create_app(settings_from({**env, "I2V_ADMIN_KEYS": ADMIN})).test_client()


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}


def test_dashboard_without_admin_keys_is_closed_to_every_api_key(service_env) -> None:
    """RQ_DASHBOARD=1 without I2V_ADMIN_KEYS: the service runs, and /rq opens to no API key."""
    env = {**service_env, "RQ_DASHBOARD": "1", "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": API_KEY}
    client = create_app(settings_from(env)).test_client()
    for auth in (_basic(API_KEY), {"Authorization": f"Bearer {API_KEY}"}, {}):
        resp = client.get("/rq/", headers=auth)
        assert resp.status_code == 401, resp.get_data(as_text=True)
        assert "I2V_ADMIN_KEYS" in resp.get_json()["detail"]


def test_dashboard_actions_are_refused_unless_enabled(service_env, redis: Redis) -> None:
    """Without RQ_DASHBOARD_ACTIONS=1 even an admin's same-origin POST cannot empty the queue."""
    queue = Queue("i2v", connection=redis)
    queue.enqueue("builtins.int", "1")
    client = _dashboard(service_env)
    resp = client.post("/rq/queue/i2v/queued/empty", headers={**ADMIN_AUTH, "Origin": "http://localhost"})
    assert resp.status_code == 403, resp.get_data(as_text=True)
    assert "RQ_DASHBOARD_ACTIONS" in resp.get_json()["detail"]
    assert len(queue) == 1


def test_dashboard_actions_are_same_origin_posts_only(service_env, redis: Redis) -> None:
    """With actions on: GETs, cross-site POSTs and POSTs with no origin are refused; the dashboard's own POST works."""
    queue = Queue("i2v", connection=redis)
    queue.enqueue("builtins.int", "1")
    client = _dashboard(service_env, RQ_DASHBOARD_ACTIONS="1")
    assert client.get("/rq/requeue/i2v", headers=ADMIN_AUTH).status_code == 403
    cross = client.post("/rq/queue/i2v/queued/empty", headers={**ADMIN_AUTH, "Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert client.post("/rq/queue/i2v/queued/empty", headers=ADMIN_AUTH).status_code == 403
    assert len(queue) == 1
    own = client.post("/rq/queue/i2v/queued/empty", headers={**ADMIN_AUTH, "Origin": "http://localhost"})
    assert own.status_code == 200, own.get_data(as_text=True)
    assert len(queue) == 0


# -- item 9: metric labels stay bounded ------------------------------------------------------------


def test_unknown_http_methods_count_as_other(client) -> None:
    """Made-up methods add no label values: they all count under method="other"."""
    before = _other_requests(client.get("/metrics").get_data(as_text=True))
    for method in ("XQ1", "XQ2", "PROPFIND"):
        client.open("/", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    assert not any(f'method="{m}"' in text for m in ("XQ1", "XQ2", "PROPFIND"))
    assert _other_requests(text) == before + 3


def _other_requests(text: str) -> float:
    """All requests counted under method="other", whatever their route and status."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("i2v_http_requests_total{") and 'method="other"' in line
    )


# -- item 11: secrets stay out of logs, start-up errors and Redis -----------------------------------


def test_redis_password_is_masked_in_start_up_errors(start_process, tmp_path: Path) -> None:
    """A malformed REDIS_URL is named in the error, its password is not."""
    bad = f"http://:{REDIS_PASSWORD}@127.0.0.1:1/0"
    web = start_process("web", HOST="127.0.0.1", PORT=str(free_port()), XDG_RUNTIME_DIR=str(tmp_path), REDIS_URL=bad)
    assert _exit_code(web) != 0
    assert "REDIS_URL" in web.output, web.output
    assert REDIS_PASSWORD not in web.output


def test_gunicorn_log_lines_mask_the_redis_password(start_process, tmp_path: Path, redis_url: str) -> None:
    """gunicorn's own lines (here an access line whose request carries the password) are masked too."""
    port = free_port()
    url = redis_url.replace("redis://", f"redis://:{REDIS_PASSWORD}@")
    web = start_process("web", HOST="127.0.0.1", PORT=str(port), XDG_RUNTIME_DIR=str(tmp_path), REDIS_URL=url)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: web.proc.poll() is not None or _healthy(base + "/healthz"), timeout=30)
    assert requests.get(f"{base}/healthz?probe={REDIS_PASSWORD}", timeout=5).status_code == 200
    wait_for(lambda: "probe=" in web.output, timeout=10, message="the access log line")
    assert REDIS_PASSWORD not in web.output
    assert "probe=***" in web.output


def test_tracebacks_rq_stores_never_contain_a_token(worker, redis: Redis) -> None:
    """A job failing with a token in its exception leaves a masked traceback in Redis."""
    job = Queue("i2v", connection=redis).enqueue("builtins.int", f"token {REPLICATE_TOKEN}")
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FAILED, timeout=30, message="the job to fail")
    stored = Job.fetch(job.id, connection=redis)
    result = stored.latest_result()
    assert result is not None and "ValueError" in result.exc_string
    assert REPLICATE_TOKEN not in result.exc_string and "***" in result.exc_string
    # Everything RQ wrote about the failure: the job hash (but its arguments and the description made
    # from them, where the test put the token) and every stored result.
    fields = {k: v for k, v in redis.hgetall(stored.key).items() if k not in (b"data", b"description")}
    assert not any(REPLICATE_TOKEN.encode() in zlib_text(v) for v in fields.values())
    for stored_result in Result.all(stored):
        assert REPLICATE_TOKEN not in (stored_result.exc_string or "")


def zlib_text(value: bytes) -> bytes:
    """A stored value as text: RQ compresses some fields with zlib."""
    try:
        return zlib.decompress(value)
    except zlib.error:
        return value
