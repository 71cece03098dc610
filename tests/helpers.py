"""Helpers shared by the test levels: waiting, processes, service environments and what the service stored."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from flask import Flask
from redis import Redis
from rq import Queue

from jobs.identity import KEY_PREFIX
from jobs.store import RequestStore
from jobs.waiting import WaitingRoom
from launch import free_port, read_procfile, spawn, start_redis

if TYPE_CHECKING:
    from config import Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
#: The ``build`` fixture: an app from the test environment plus overrides.
Build = Callable[..., Flask]

#: Credentials the fakes accept and the service is given; they never leave this machine.
REPLICATE_TOKEN = "r8_test_token_0123456789"
PIKA_TOKEN = "pika_test_token_0123456789"
GAME_KEY = "game_test_key_0123456789"
MEDIA_SECRET = "media-name-secret-for-tests-0123456789abcdef"

#: Short timings, set through the same variables users set.
FAST_TIMINGS = {
    "INITIAL_WAIT_TIME": "0.2",
    "POLL_INTERVAL": "0.1",
    "MAX_CHECK_TIME": "2",
    "CAPTION_POLL_INTERVAL": "0.05",
    "CAPTION_TIMEOUT": "5",
    "PROVIDER_RETRY_BUDGET": "3",
    "RETRY_BASE_DELAY": "0.05",
    "HTTP_CONNECT_TIMEOUT": "1",
    "HTTP_READ_TIMEOUT": "1",
    "CALLBACK_RETRY_DELAYS": "0.2,0.2,0.2",
    "LOG_LEVEL": "INFO",
    # Tests read JSON lines: a LOG_FORMAT=text in the shell must not change them.
    "LOG_FORMAT": "json",
    "JANITOR_INTERVAL": "0.5",
    "JANITOR_GRACE": "1",
    "WORKER_HEARTBEAT_INTERVAL": "1",
    "WORKER_PROCESSES": "1",
}

#: What a worker and the app need in development with the offline backends; images come from 127.0.0.1.
DEV = {
    "I2V_ENV": "development",
    "CAPTION_BACKEND": "local",
    "VIDEO_BACKEND": "local",
    "IMAGE_HOST_ALLOWLIST": "127.0.0.1",
    "LOCAL_VIDEO_SECONDS": "1",
    "LOCAL_VIDEO_FPS": "8",
    "GAME_API_KEY": "",
}
#: Seconds a test waits for an answer from a process it started over HTTP.
HTTP_TIMEOUT = 5.0


def completed_callback(video_url: str, title: str = "Plane fly") -> dict:
    """The GAME callback body for a finished video, written out as ../shared/CONTRACTS.md gives it."""
    return {
        "data": {
            "addToInventory": True,
            "status": "COMPLETED",
            "output": {"title": title, "type": "MEDIA", "category": "MARKETING_VIDEO", "url": video_url},
        }
    }


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str = "") -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and return that.

    Args:
        predicate: the condition; its truthy result is the return value.
        timeout: seconds after which the test fails.
        interval: seconds between two calls.
        message: what is awaited, for the failure ("timed out after 10 s waiting for <message>").

    Raises:
        AssertionError: if ``predicate`` is still falsy after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {message or predicate} (last value {value!r})"
            )
        time.sleep(interval)


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process (children first), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


class ServiceProcess:
    """One Procfile process (``web`` or ``worker``) run as the platform would, output to a log file."""

    def __init__(self, kind: str, env: dict[str, str], log_dir: Path) -> None:
        self.kind = kind
        self.env = env
        self.log_path = log_dir / f"{kind}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        """Start the process with the Procfile's command."""
        command = read_procfile()[self.kind]
        self._log = self.log_path.open("wb")
        self.proc = spawn(command, self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        """Send a signal to the process and all its descendants, as a platform stopping a dyno would.

        RQ's work-horse moves to a process group of its own, so a group signal would miss it.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash, an OOM kill of everything)."""
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=5)


def start_dev_service(start_process: Callable[..., ServiceProcess], tmp_path: Path) -> str:
    """``web`` and ``worker`` in development (:data:`DEV`), callbacks to the built-in receiver.

    Args:
        start_process: the ``start_process`` fixture.
        tmp_path: the test's directory, for the media and gunicorn's runtime files.

    Returns:
        The web process's base URL, once it answers ``/healthz``.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **DEV,
        "MEDIA_DIR": str(tmp_path / "media"),
        "PUBLIC_BASE_URL": base,
        "CALLBACK_API_URL": base + "/dev/callbacks/{request_id}",
    }
    web = start_process("web", HOST="127.0.0.1", PORT=str(port), XDG_RUNTIME_DIR=str(tmp_path), **env)
    start_process("worker", **env)
    wait_until_serving(web, base + "/healthz")
    return base


def wait_until_serving(web: ServiceProcess, url: str, timeout: float = 15.0) -> None:
    """Wait until the web process answers ``url`` with 200; a web process that dies fails at once.

    A bad setting or a taken port ends the process: the failure then shows what it printed
    instead of waiting out the timeout.
    """

    def serving() -> bool:
        code = web.proc.poll() if web.proc else None
        assert code is None, f"web exited with {code} before it was ready:\n{web.output[-800:]}"
        try:
            return requests.get(url, timeout=HTTP_TIMEOUT).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(serving, timeout=timeout, interval=0.1, message=f"web to answer {url}")


def python_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a service process: this interpreter's PATH, no `.env` surprises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIKA", "REPLICATE", "GAME", "CALLBACK"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class OwnRedis:
    """A test's own redis-server on a fixed port, AOF on: stopped, paused, killed and started again.

    It flushes every write before answering (``appendfsync always``): the tests kill it and expect
    every write it acknowledged to come back from its AOF (see docs/operations.md).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start (or start again, reading the AOF back) and wait until it answers."""
        self.proc, _ = start_redis(self.data_dir, self.port, appendfsync="always")

    def pause(self, seconds: float) -> None:
        """Freeze the server (SIGSTOP) for ``seconds``: connections stay open and get no answer."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def kill_and_restart(self) -> None:
        """SIGKILL the server (no shutdown save) and start it again from its AOF."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        time.sleep(0.5)
        self.start()

    def stop(self) -> None:
        """Resume it if paused, then stop it cleanly (a clean shutdown writes the data out)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def connect(self) -> Redis:
        """A plain connection for the test's own reads."""
        return Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)


def redis_bytes(store: Any, name: str) -> bytes | None:
    """All of a video in the Redis media store, read the way the web reads it (in slices)."""
    opened = store.open(name)
    if opened is None:
        return None
    file, _ = opened
    with file:
        return file.read()


def records(redis: Redis) -> list[bytes]:
    """The keys of every request record in the test Redis."""
    return redis.keys(KEY_PREFIX + "*")


def queued(redis: Redis, settings: Settings) -> int:
    """How many jobs wait in the service's queue."""
    return Queue(settings.queue_name, connection=redis).count


def fresh_window(seconds: int) -> None:
    """Wait out the end of a fixed rate-limit window so a test's requests all fall in one window."""
    left = seconds - time.time() % seconds
    if left < 3:
        time.sleep(left + 0.05)


def with_failing_view(app: Flask) -> Flask:
    """The app with a test-only route, ``/boom``, whose view raises."""

    def boom():
        raise RuntimeError("kaboom: internal detail in secret_module, line 42")

    app.add_url_rule("/boom", "boom", boom, methods=["GET", "POST"])
    return app


def waiting_context(redis: Redis, poll_interval: float) -> SimpleNamespace:
    """Just what the pipeline's sleep and cancel check use: Redis, the poll interval and a waiting room.

    The room reads cancels every three polls, as the worker's does.
    """
    store = RequestStore(redis, ttl=3600)
    return SimpleNamespace(
        settings=SimpleNamespace(poll_interval=poll_interval),
        redis=redis,
        store=store,
        waiting=WaitingRoom(store, cancel_interval=3 * poll_interval),
    )
