"""End to end: the Procfile's own processes (gunicorn ``web``, ``rq worker``) over real HTTP, against the fakes."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from launch import free_port
from tests.api import ESCAPED, PLAIN, HttpApi
from tests.fakes import FakeGame, FakePika, Fakes
from tests.helpers import ServiceProcess, completed_callback, wait_for

pytestmark = pytest.mark.e2e

#: Seconds a process gets to answer /healthz, or to exit when it should refuse to start.
START_TIMEOUT = 15.0
EXIT_TIMEOUT = 20.0
HTTP_TIMEOUT = 5.0
#: Quiet time after a request settles in which a duplicate callback would show up.
DUPLICATE_GRACE = 0.5
#: Timings of the restart tests: the video outlives the first worker, and the deadline is far enough
#: away for a crashed request to be found (its heartbeat must lapse first) and still finish.
SLOW_TIMINGS = {"INITIAL_WAIT_TIME": "1", "MAX_CHECK_TIME": "60"}

StartProcess = Callable[..., ServiceProcess]


@dataclass
class Web:
    """A running ``web`` process (gunicorn), its base URL and its API."""

    process: ServiceProcess
    url: str
    api: HttpApi

    def get(self, path: str) -> requests.Response:
        """``GET`` a path of the service."""
        return requests.get(self.url + path, timeout=HTTP_TIMEOUT)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Web:
        """Poll ``/healthz`` until it answers 200; fail at once if the process exits."""

        def healthy() -> bool:
            code = self.process.proc.poll() if self.process.proc else None
            assert code is None, f"web exited with {code} before it was ready:\n{self.process.output[-500:]}"
            try:
                return self.get("/healthz").status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=timeout, interval=0.1, message="web to answer /healthz")
        return self


def start_web(start_process: StartProcess, runtime_dir: Path, game: FakeGame | None = None, **overrides: str) -> Web:
    """Start the ``web`` process on a free port of 127.0.0.1 (not waiting for it to be ready).

    ``runtime_dir`` receives gunicorn's control socket, which would otherwise be shared by every run;
    ``game`` is the fake GAME its API reads callbacks from.
    """
    port = free_port()
    env = {"HOST": "127.0.0.1", "PORT": str(port), "XDG_RUNTIME_DIR": str(runtime_dir), **overrides}
    url = f"http://127.0.0.1:{port}"
    return Web(start_process("web", **env), url, HttpApi(url, game, timeout=HTTP_TIMEOUT))


def exit_code(process: ServiceProcess, timeout: float = EXIT_TIMEOUT) -> int:
    """Wait for a process to exit by itself and return its exit code."""
    assert process.proc is not None
    try:
        return process.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{process.kind} still running after {timeout:g} s:\n{process.output[-500:]}") from None


def signal_everything(process: ServiceProcess, sig: int) -> None:
    """Send ``sig`` to a Procfile process and all its children, as a platform stopping a container does."""
    if sig == signal.SIGKILL:
        process.kill()
    else:
        process.signal(sig)


def video_url(fake_pika: FakePika, job_id: str) -> str:
    """The ``resultUrl`` Pika shows for a finished job."""
    return fake_pika.jobs[job_id]["videos"][0]["resultUrl"]


@pytest.fixture
def web(start_process: StartProcess, tmp_path: Path, fakes: Fakes) -> Web:
    """The ``web`` process with the test environment, ready to answer."""
    return start_web(start_process, tmp_path, fakes.game).wait_ready()


def test_happy_path_through_gunicorn_and_rq_worker(
    web: Web, start_process: StartProcess, fakes, service_env: dict[str, str]
) -> None:
    """A request sent to gunicorn is run by an rq worker and ends in one COMPLETED callback with the video."""
    start_process("worker")

    resp = web.api.submit("e2e-happy", ESCAPED)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert set(body) == {"message", "request_id"}, body
    assert body["request_id"] == "e2e-happy"
    eta = re.fullmatch(r"Video generation pipeline initialized \| ETA: (\d+)-(\d+) minutes", body["message"])
    assert eta and 0 < int(eta[1]) < int(eta[2]), body["message"]
    assert resp.headers["Location"].endswith("/api/v1/i2v/e2e-happy")

    record = web.api.settled("e2e-happy")
    time.sleep(DUPLICATE_GRACE)
    job_id = record["provider"]["job_id"]
    assert web.api.one_callback("e2e-happy") == completed_callback(video_url(fakes.pika, job_id))
    assert fakes.game.callbacks_for("e2e-happy")[0].headers["x-api-key"] == service_env["GAME_API_KEY"]
    assert [c["image"] for c in fakes.replicate.creates] == [PLAIN]
    assert [g["image"] for g in fakes.pika.generates] == [PLAIN]
    assert record["status"] == "completed"
    assert record["callback"]["status"] == "delivered"
    assert record["video_url"] == video_url(fakes.pika, job_id)


def test_web_accepts_requests_while_no_worker_runs(web: Web, start_process: StartProcess, fakes) -> None:
    """Without a worker the web process still answers 202 and keeps the request queued until one starts."""
    resp = web.api.submit("e2e-later")
    assert resp.status_code == 202, resp.text
    assert web.api.record("e2e-later")["status"] == "queued"
    time.sleep(1)
    assert web.api.record("e2e-later")["status"] == "queued"
    assert fakes.replicate.creates == [] and fakes.pika.generates == [] and fakes.game.callbacks == []

    start_process("worker")
    record = web.api.settled("e2e-later")
    time.sleep(DUPLICATE_GRACE)
    assert record["status"] == "completed"
    assert web.api.one_callback("e2e-later")["data"]["status"] == "COMPLETED"
    assert len(fakes.pika.generates) == 1


def test_many_requests_on_two_workers_each_call_back_once(web: Web, start_process: StartProcess, fakes) -> None:
    """Ten requests at once on two workers (and the janitor): each runs once and gets exactly one callback."""
    start_process("worker")
    start_process("worker")
    start_process("scheduler")
    images = {f"e2e-many-{i}": f"https://cdn.example.com/images/plane-{i}.jpg" for i in range(10)}

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        replies = list(pool.map(lambda item: web.api.submit(*item), images.items()))
    assert [r.status_code for r in replies] == [202] * len(images), [r.text for r in replies]

    records = {request_id: web.api.settled(request_id, timeout=20) for request_id in images}
    time.sleep(DUPLICATE_GRACE)
    for request_id, record in records.items():
        assert record["status"] == "completed", record
        assert web.api.one_callback(request_id)["data"]["status"] == "COMPLETED"
    assert len(fakes.game.callbacks) == len(images)
    assert sorted(g["image"] for g in fakes.pika.generates) == sorted(images.values())
    assert sorted(c["image"] for c in fakes.replicate.creates) == sorted(images.values())


def test_worker_without_provider_tokens_refuses_to_start(start_process: StartProcess) -> None:
    """A worker lacking provider tokens exits non-zero at start, naming them, without a traceback."""
    worker = start_process("worker", REPLICATE_API_TOKEN="", GAME_API_KEY="")
    assert exit_code(worker) != 0
    assert "REPLICATE_API_TOKEN" in worker.output
    assert "GAME_API_KEY" in worker.output
    assert "Traceback" not in worker.output


def test_web_starts_without_any_provider_token(start_process: StartProcess, tmp_path: Path) -> None:
    """The web process needs no provider token: it starts and answers /healthz."""
    web = start_web(start_process, tmp_path, REPLICATE_API_TOKEN="", PIKAPI_BEARER_TOKEN="", GAME_API_KEY="")
    web.wait_ready()
    assert web.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("kind", "variable", "value"),
    [
        ("web", "MAX_CHECK_TIME", "soon"),
        ("worker", "POLL_INTERVAL", "-1"),
        ("scheduler", "JANITOR_INTERVAL", "never"),
    ],
)
def test_bad_setting_stops_the_process_at_start(
    start_process: StartProcess, tmp_path: Path, kind: str, variable: str, value: str
) -> None:
    """A bad setting stops the process at start with a non-zero exit and a message naming the variable."""
    if kind == "web":
        process = start_web(start_process, tmp_path, **{variable: value}).process
    else:
        process = start_process(kind, **{variable: value})
    assert exit_code(process) != 0
    assert variable in process.output


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGKILL, id="sigkill"),
        pytest.param(signal.SIGTERM, id="sigterm"),
    ],
)
def test_request_survives_worker_restart(start_process: StartProcess, tmp_path: Path, fakes, sig: int) -> None:
    """A worker stopped mid-generation (SIGKILL or SIGTERM) is replaced and the request ends once, paid once."""
    fakes.pika.duration = 4
    web = start_web(start_process, tmp_path, fakes.game, **SLOW_TIMINGS).wait_ready()
    start_process("scheduler", **SLOW_TIMINGS)
    first = start_process("worker", **SLOW_TIMINGS)
    request_id = f"e2e-restart-{signal.Signals(sig).name.lower()}"
    assert web.api.submit(request_id).status_code == 202

    job_id = web.api.provider_job(request_id, timeout=10)
    signal_everything(first, sig)
    exit_code(first, timeout=10)
    assert fakes.game.callbacks_for(request_id) == [], "the first worker finished the request: nothing was interrupted"
    assert web.api.record(request_id)["status"] == "processing", "the request was handed back unfinished"

    start_process("worker", **SLOW_TIMINGS)
    # After a SIGKILL the request is found once its heartbeat lapses (about 16 s with these timings).
    record = web.api.settled(request_id, timeout=25)
    time.sleep(DUPLICATE_GRACE)
    assert record["status"] == "completed", record
    assert web.api.one_callback(request_id) == completed_callback(video_url(fakes.pika, job_id))
    assert len(fakes.pika.generates) == 1
    assert len(fakes.replicate.creates) == 1
