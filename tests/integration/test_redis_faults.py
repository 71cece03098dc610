"""Redis going away and coming back, with a real redis-server stopped and restarted by the test."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from config import settings_from
from i2v_app import create_app
from tests.api import Api
from tests.helpers import OwnRedis, wait_for


@pytest.fixture
def faulty(own_redis: OwnRedis, service_env: dict[str, str], start_process):
    """The app and a way to start processes, all on the restartable Redis."""
    env = {**service_env, "REDIS_URL": own_redis.url}
    app = create_app(settings_from(env))

    def start(kind: str, **extra: str):
        return start_process(kind, REDIS_URL=own_redis.url, **extra)

    return app, start


def test_web_answers_503_quickly_while_redis_is_down_and_recovers(faulty, own_redis) -> None:
    app, _ = faulty
    client = app.test_client()
    api = Api(client)
    own_redis.stop()
    started = time.monotonic()
    resp = api.submit("r1", "https://x.io/a.jpg")
    assert resp.status_code == 503
    assert resp.mimetype == "application/problem+json"
    assert resp.headers["Retry-After"]
    assert time.monotonic() - started < 5
    assert client.get("/readyz").status_code == 503
    assert client.get("/readyz").get_json()["redis"] == "unreachable"
    assert client.get("/healthz").status_code == 200
    own_redis.start()
    resp = api.submit("r1", "https://x.io/a.jpg")
    assert resp.status_code == 202


def test_readyz_needs_a_worker_and_reports_the_eviction_policy(faulty, own_redis) -> None:
    app, start = faulty
    client = app.test_client()
    body = client.get("/readyz").get_json()
    assert body["status"] == "not ready" and body["workers"] == 0
    Redis.from_url(own_redis.url).config_set("maxmemory-policy", "allkeys-lru")
    start("worker")
    body = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.get_json(), message="ready")
    assert body["workers"] == 1
    assert body["eviction_policy"] == "allkeys-lru"
    assert any("noeviction" in w for w in body["warnings"])


def test_request_in_flight_survives_a_redis_restart_with_one_callback(faulty, own_redis, fakes) -> None:
    app, start = faulty
    fakes.pika.duration = 3
    slow = {"MAX_CHECK_TIME": "30"}
    worker = start("worker", **slow)
    start("scheduler", **slow)
    api = Api(app.test_client())
    assert api.submit("rf", "https://x.io/a.jpg").status_code == 202
    wait_for(lambda: api.record("rf")["provider"]["job_id"], message="a Pika job")
    own_redis.stop()
    time.sleep(3)
    assert worker.proc.poll() is None, worker.output[-2000:]
    own_redis.start()
    wait_for(lambda: fakes.game.callbacks_for("rf"), timeout=40, message="the callback")
    time.sleep(1)
    assert len(fakes.game.callbacks_for("rf")) == 1
    assert len(fakes.pika.generates) == 1
    assert worker.proc.poll() is None


def test_idle_worker_waits_for_redis_and_carries_on(faulty, own_redis, fakes) -> None:
    app, start = faulty
    worker = start("worker")
    client = app.test_client()
    api = Api(client)
    wait_for(lambda: client.get("/readyz").status_code == 200, message="worker registered")
    own_redis.stop()
    time.sleep(2)
    own_redis.start()
    assert api.submit("ri", "https://x.io/a.jpg").status_code == 202
    wait_for(lambda: fakes.game.callbacks_for("ri"), timeout=30, message="the callback")
    assert worker.proc.poll() is None
