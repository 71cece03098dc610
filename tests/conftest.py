"""Fixtures for every test level: a real Redis, the provider fakes, the app and its processes.

The tests start their own redis-server on a free port (or use ``I2V_TEST_REDIS_URL``, flushing
only its database), so they never touch another Redis's data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from redis import Redis

from config import Settings, settings_from
from i2v_app import create_app
from launch import find_redis_server, start_redis
from tests.api import Api
from tests.fakes import FakeGame, FakePika, FakeReplicate, Fakes
from tests.fakes.files import FileServer
from tests.helpers import (
    FAST_TIMINGS,
    GAME_KEY,
    MEDIA_SECRET,
    PIKA_TOKEN,
    REPLICATE_TOKEN,
    Build,
    OwnRedis,
    ServiceProcess,
    python_env,
)

os.environ["I2V_DOTENV"] = "0"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the whole run: our own redis-server unless I2V_TEST_REDIS_URL names one."""
    given = os.environ.get("I2V_TEST_REDIS_URL")
    if given:
        # Each test process (pytest-xdist's gw0, gw1, ...) flushes a database of its own.
        index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        base = Redis.from_url(given).connection_pool.connection_kwargs.get("db", 0)
        yield (
            given.rsplit("/", 1)[0] + f"/{base + index}"
            if urlsplit(given).path.strip("/")
            else f"{given.rstrip('/')}/{index}"
        )
        return
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A Redis of the test's own that it may stop, pause or kill (set up before the processes: stops after them)."""
    server = OwnRedis(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A connection to the test Redis, with its database empty before and after the test."""
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture(scope="session")
def file_server() -> Iterator[FileServer]:
    """An image host and CDN on 127.0.0.1 (one server for the run, reset for every test)."""
    with FileServer() as server:
        yield server


@pytest.fixture
def files(file_server: FileServer) -> FileServer:
    """The image host and CDN, emptied for this test."""
    file_server.reset()
    return file_server


@pytest.fixture(scope="session")
def fake_replicate() -> Iterator[FakeReplicate]:
    """Replicate's API on 127.0.0.1 (one server for the run, reset for every test)."""
    with FakeReplicate(token=REPLICATE_TOKEN) as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_pika() -> Iterator[FakePika]:
    """Pika's API (pikapikapika.io) on 127.0.0.1."""
    with FakePika(token=PIKA_TOKEN) as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_game() -> Iterator[FakeGame]:
    """GAME's callback endpoint on 127.0.0.1."""
    with FakeGame(api_key=GAME_KEY) as fake:
        yield fake


@pytest.fixture
def fakes(fake_replicate: FakeReplicate, fake_pika: FakePika, fake_game: FakeGame) -> Iterator[Fakes]:
    """All three fakes, reset to good behaviour for this test."""
    for fake in (fake_replicate, fake_pika, fake_game):
        fake.reset()
    fake_replicate.duration = 0.05
    fake_pika.duration = 0.3
    yield Fakes(fake_replicate, fake_pika, fake_game)
    for fake in (fake_replicate, fake_pika, fake_game):
        assert not fake.errors, f"{type(fake).__name__} raised: {fake.errors}"


@pytest.fixture
def service_env(redis: Redis, redis_url: str, fakes: Fakes) -> dict[str, str]:
    """Variables that point the service at the test Redis and the fakes, with short timings."""
    return {
        "REDIS_URL": redis_url,
        "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
        "REPLICATE_BASE_URL": fakes.replicate.url,
        "PIKAPI_BEARER_TOKEN": PIKA_TOKEN,
        "PIKAPI_BASE_URL": fakes.pika.base_url,
        "GAME_API_KEY": GAME_KEY,
        "MEDIA_NAME_SECRET": MEDIA_SECRET,
        "CALLBACK_API_URL": f"{fakes.game.url}/requests",
        # Authentication has tests of its own; the other tests exercise everything else.
        "I2V_AUTH_DISABLED": "1",
        # The fake image URLs live on a documentation domain; the default rules apply to it.
        **FAST_TIMINGS,
    }


@pytest.fixture
def settings(service_env: dict[str, str]) -> Settings:
    """Settings built from ``service_env`` exactly as a process would read them."""
    return settings_from(service_env)


@pytest.fixture
def app(settings: Settings) -> Flask:
    """The Flask app on the test Redis."""
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def build(service_env: dict[str, str]) -> Build:
    """Make an app from the test environment plus overrides, answering failures as production does."""

    def make(**overrides: str) -> Flask:
        app = create_app(settings_from({**service_env, **overrides}))
        app.config["TESTING"] = True
        app.config["PROPAGATE_EXCEPTIONS"] = False
        return app

    return make


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def api(client: FlaskClient, fakes: Fakes) -> Api:
    """The app's API through the test client, and the callbacks the fake GAME got."""
    return Api(client, fakes.game)


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """A CLI runner of the app."""
    return app.test_cli_runner()


@pytest.fixture
def log_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where process logs go; a failed test prints them."""
    path = tmp_path / "logs"
    path.mkdir()
    yield path
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(path.glob("*.log")):
            print(f"----- {log.name} -----\n{log.read_text(errors='replace')[-6000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item so fixtures can tell a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def start_process(service_env: dict[str, str], log_dir: Path):
    """Start Procfile processes (``web``, ``worker``) with the test environment; stop them after."""
    started: list[ServiceProcess] = []

    def start(kind: str, **overrides: str) -> ServiceProcess:
        proc = ServiceProcess(kind, python_env({**service_env, **overrides}), log_dir).start()
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def worker(start_process) -> ServiceProcess:
    """One real ``rq worker`` (the Procfile's command) on the test Redis."""
    return start_process("worker")


if find_redis_server() is None and not os.environ.get("I2V_TEST_REDIS_URL"):
    raise pytest.UsageError("the tests need redis-server on PATH, the development requirements, or I2V_TEST_REDIS_URL")
