"""What a worker running many jobs in threads relies on: per-thread deadlines, the heavy-step cap, no SIGALRM,
a requests session per call, and an ETA that counts threads (sleeps and cancels: test_waits)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from PIL import Image
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from config import Settings
from i2v_app import eta
from jobs import shutdown
from jobs.clients import http, local_backends
from jobs.errors import GenerationFailed
from jobs.heavy import HeavySteps
from jobs.shutdown import WorkerStopping
from jobs.states import Status
from jobs.store import Record
from jobs.worker import PipelineWorker


@pytest.fixture(autouse=True)
def no_stop_flag():
    shutdown.REQUESTED.clear()
    shutdown.set_deadline(None)
    yield
    shutdown.REQUESTED.clear()
    shutdown.set_deadline(None)


def record(request_id: str = "r") -> Record:
    return Record(request_id=request_id, image_url="https://cdn.example.com/a.jpg")


def test_a_deadline_belongs_to_its_thread() -> None:
    """A deadline set in one job's thread does not stop another thread's job."""
    shutdown.set_deadline(0.01)
    time.sleep(0.05)
    outcome: list[str] = []

    def other() -> None:
        try:
            shutdown.check()
            outcome.append("ran on")
        except JobTimeoutException:
            outcome.append("stopped")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert outcome == ["ran on"]
    with pytest.raises(JobTimeoutException):
        shutdown.check()


def test_heavy_steps_run_at_most_the_limit_at_once() -> None:
    """Six threads, a limit of two: never more than two inside at once."""
    heavy = HeavySteps(2)
    inside = 0
    most = 0
    lock = threading.Lock()

    def step() -> None:
        nonlocal inside, most
        with heavy.turn():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.1)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=step) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_a_thread_waiting_for_a_heavy_step_hands_back_on_sigterm() -> None:
    """A thread waiting its turn stops on SIGTERM instead of waiting for the heavy step ahead of it."""
    heavy = HeavySteps(1)
    outcome: list[str] = []

    def wait_turn() -> None:
        try:
            with heavy.turn():
                outcome.append("ran")
        except WorkerStopping:
            outcome.append("stopped")

    with heavy.turn():
        thread = threading.Thread(target=wait_turn)
        thread.start()
        time.sleep(0.2)
        shutdown.REQUESTED.set()
        thread.join(timeout=3)
    assert outcome == ["stopped"]


def test_jobs_in_threads_run_without_rqs_alarm() -> None:
    """RQ's default time limit cannot be set up outside the main thread; the worker's can."""
    errors: dict[str, BaseException | None] = {}

    def run(name: str, penalty: type) -> None:
        try:
            with penalty(5, JobTimeoutException, job_id="j"):
                pass
            errors[name] = None
        except BaseException as exc:
            errors[name] = exc

    for name, penalty in (("rq", UnixSignalDeathPenalty), ("worker", PipelineWorker.death_penalty_class)):
        thread = threading.Thread(target=run, args=(name, penalty))
        thread.start()
        thread.join()
    assert isinstance(errors["rq"], ValueError)
    assert errors["worker"] is None


def test_every_post_goes_through_a_session_of_its_own(monkeypatch) -> None:
    """Threads posting at once never share a requests session (requests does not promise thread safety)."""
    made: list[requests.Session] = []

    class Recording(http.Session):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

        def post(self, url, **kwargs):  # type: ignore[override]
            return SimpleNamespace(url=url, headers=dict(self.headers))

    monkeypatch.setattr(http, "Session", Recording)
    sessions = http.SessionPerCall()
    sessions.headers["Authorization"] = "Bearer t"
    replies = [sessions.post("https://example.com/x") for _ in range(2)]
    assert len(made) == 2 and made[0] is not made[1]
    assert all(reply.headers["Authorization"] == "Bearer t" for reply in replies)


def test_the_queue_drains_in_waves_of_processes_times_threads() -> None:
    """Two processes of 100 threads: the 199th queued request starts with the first, the 200th after them."""
    settings = Settings(worker_threads=100, video_backend="local", caption_backend="local")
    queued = Record(request_id="q", image_url="https://cdn.example.com/a.jpg", status=Status.QUEUED)
    first = eta.estimate(settings, queued, ahead=0, workers=2)
    same_wave = eta.estimate(settings, queued, ahead=199, workers=2)
    next_wave = eta.estimate(settings, queued, ahead=200, workers=2)
    assert first == same_wave
    assert next_wave is not None and first is not None and next_wave[0] > first[0]


def test_a_stuck_encoder_is_killed_instead_of_holding_its_thread(monkeypatch, tmp_path: Path) -> None:
    """An encoder that stops reading is killed after RENDER_TIMEOUT and the render fails."""
    stuck = tmp_path / "stuck-encoder"
    stuck.write_text("#!/bin/sh\nexec sleep 30\n")
    stuck.chmod(0o755)
    monkeypatch.setattr(local_backends.imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(stuck))
    monkeypatch.setattr(local_backends, "RENDER_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(GenerationFailed):
        local_backends.render(Image.new("RGB", (320, 200), (40, 80, 200)), 2, 12)
    assert time.monotonic() - started < 5
