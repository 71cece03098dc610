"""``make run`` on a machine with no accounts: launch.py alone gives a working service that makes a real video.

launch.py is run as ``make run`` runs it, from the repository, with an environment that has no Redis URL,
no provider token and no I2V_* setting. It starts Redis, the web process, the worker and the janitor.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from launch import find_redis_server, free_port
from tests.fakes.files import probe
from tests.helpers import ROOT, descendants, wait_for

pytestmark = pytest.mark.e2e

START_TIMEOUT = 40.0
STOP_TIMEOUT = 45.0  # launch.py gives its processes 25 s, then SIGKILLs and waits 5 s more
#: Seconds allowed after launch.py exits for the last of its children to be reaped.
EXIT_GRACE = 3.0
HTTP_TIMEOUT = 5.0


@dataclass
class Launched:
    """A running launch.py: its process, base URL and everything it printed."""

    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=HTTP_TIMEOUT)

    def children(self) -> dict[int, str]:
        """Every live descendant of launch.py, with its command line."""
        found = {}
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return found


def minimal_env(port: int) -> dict[str, str]:
    """What a newcomer's shell has: PATH (this virtual environment first), HOME, and the port to use."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {"PATH": path, "HOME": os.environ.get("HOME", "/"), "I2V_DOTENV": "0", "PORT": str(port)}


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    """launch.py running in its own session, answering /healthz; everything it started is gone afterwards."""
    port = free_port()
    log = tmp_path / "launch.log"
    # As from a terminal: Ctrl-C's SIGINT at its default. A test run started in the background of a
    # shell script ignores SIGINT, and a child would inherit that (launch.py, like any Python
    # program, then keeps ignoring it); a signal with a handler goes back to its default at exec.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "launch.py"],
                cwd=ROOT,
                env=minimal_env(port),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        signal.signal(signal.SIGINT, ignored)
    run = Launched(proc, f"http://127.0.0.1:{port}", log)
    seen: set[int] = set()
    try:

        def healthy() -> bool:
            assert proc.poll() is None, f"launch.py exited with {proc.returncode}:\n{run.output[-2000:]}"
            seen.update(run.children())
            try:
                return run.get("/healthz").status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=START_TIMEOUT, interval=0.2, message="launch.py's web process to answer /healthz")
        yield run
    finally:
        seen.update(run.children())
        for pid in [proc.pid, *seen]:  # only what this test started, by id
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_until_all_gone(run: Launched, pids: dict[int, str]) -> None:
    """launch.py exits, and every process it started is gone, within STOP_TIMEOUT."""
    try:
        run.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"launch.py still running after {STOP_TIMEOUT:g} s:\n{run.output[-2000:]}") from None
    deadline = time.monotonic() + EXIT_GRACE  # launch.py waits for its children, so little is left to wait for
    while (left := [cmd for pid, cmd in pids.items() if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"still running after launch.py stopped: {left}\n{run.output[-2000:]}"


def assert_every_process_type_started(children: dict[int, str]) -> None:
    commands = " | ".join(children.values())
    redis = Path(find_redis_server() or "redis-server").name
    for expected in (redis, "gunicorn", "rq worker", "jobs.janitor"):
        assert expected in commands, f"no {expected} among launch.py's children: {commands}"


def test_make_run_turns_the_sample_image_into_a_video_with_no_accounts(launched: Launched) -> None:
    """With no settings at all: banner, sample image → completed request → one COMPLETED dev callback → an MP4."""
    output = launched.output
    assert re.search(r"started Redis at redis://127\.0\.0\.1:\d+", output), output
    assert "development mode: caption=local video=local" in output
    assert "authentication off" in output
    assert f"callbacks go to {launched.url}/dev/callbacks/{{request_id}}" in output
    assert f"lists what it got at {launched.url}/dev/callbacks" in output
    assert f"try it at {launched.url}/playground" in output
    assert launched.get("/playground").status_code == 200
    try_line = re.search(r"try: curl -X POST (\S+) .*\"image_id\": \"([^\"]+)\"", output)
    assert try_line, output
    assert try_line[1] == f"{launched.url}/api/v1/i2v"
    sample = try_line[2]
    assert sample == f"{launched.url}/dev/sample.png"

    request_id = f"make-run-{uuid.uuid4().hex[:8]}"  # Redis data persists across runs
    resp = requests.post(
        try_line[1], json={"image_id": sample}, headers={"x-request-id": request_id}, timeout=HTTP_TIMEOUT
    )
    assert resp.status_code == 202, resp.text

    def finished() -> dict[str, Any] | None:
        body = launched.get(f"/api/v1/i2v/{request_id}").json()
        return body if body["status"] in ("completed", "failed", "canceled") else None

    record = wait_for(finished, timeout=60, interval=0.3, message="the request to finish")
    assert record["status"] == "completed", record

    def callbacks() -> list[dict[str, Any]]:
        return [e for e in launched.get("/dev/callbacks").json() if e["request_id"] == request_id]

    wait_for(callbacks, timeout=15, interval=0.2, message="the callback at /dev/callbacks")
    time.sleep(0.5)  # a duplicate would show up now
    [entry] = callbacks()
    data = entry["body"]["data"]
    assert data["status"] == "COMPLETED"
    assert data["output"]["url"] == record["video_url"]
    assert data["output"]["url"].startswith(f"{launched.url}/media/")
    assert entry["api_key_sent"] is False

    video = requests.get(data["output"]["url"], timeout=HTTP_TIMEOUT)
    assert video.status_code == 200
    assert video.headers["Content-Type"] == "video/mp4"
    info = probe(video.content)
    assert (info.codec, info.fps, len(info.frames)) == ("h264", 24, 96)  # the default: 4 s at 24 fps

    children = launched.children()
    assert_every_process_type_started(children)
    launched.proc.send_signal(signal.SIGTERM)
    wait_until_all_gone(launched, children)
    assert launched.proc.returncode == 0


def test_ctrl_c_stops_everything_launch_started(launched: Launched) -> None:
    """Ctrl-C (SIGINT to the whole foreground process group) stops launch.py and every child within 30 s."""

    def settled() -> bool:
        # Every worker of the pool is listening (RQ logs both lines), so Ctrl-C does not hit a start-up.
        output = launched.output
        started = output.count("Starting worker started with PID")
        return started > 0 and output.count("*** Listening on") >= started

    wait_for(settled, timeout=20, interval=0.2, message="every worker of the pool to listen")
    time.sleep(0.5)
    children = launched.children()
    assert_every_process_type_started(children)
    os.killpg(launched.proc.pid, signal.SIGINT)
    wait_until_all_gone(launched, children)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_stuck_worker_process_does_not_outlive_launch(launched: Launched) -> None:
    """Even a worker process that ignores the stop request is gone once launch.py has exited."""

    def pool_and_workers() -> tuple[dict[int, str], list[int]] | None:
        # /healthz may answer before the pool has forked its workers.
        children = launched.children()
        pools = [
            pid for pid, cmd in children.items() if "rq worker-pool" in cmd and parent_of(pid) == launched.proc.pid
        ]
        workers = [
            pid for pid, cmd in children.items() if pools and "rq worker-pool" in cmd and parent_of(pid) == pools[0]
        ]
        return (children, workers) if len(pools) == 1 and workers else None

    children, workers = wait_for(pool_and_workers, timeout=20, message="the worker pool and its workers")
    os.kill(workers[0], signal.SIGSTOP)  # frozen: it will never act on SIGTERM
    launched.proc.send_signal(signal.SIGTERM)
    wait_until_all_gone(launched, children)
