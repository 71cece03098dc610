"""What every benchmark part shares: processes it starts (and always stops), Redis, /proc readings.

Every process is started in a session of its own and remembered, so :func:`stop_everything` can end
it and all its descendants by pid, whatever happened in between. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import calendar
import contextlib
import importlib.metadata
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from redis import Redis

from launch import find_redis_server, free_port, read_procfile, spawn, start_redis
from tests.helpers import descendants

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
#: Logs and scratch data of a run (ignored by git).
OUT_DIR = BENCH_DIR / "out"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

#: Credentials the fakes accept; they never leave this machine.
REPLICATE_TOKEN = "r8_bench_token_0123456789"
PIKA_TOKEN = "pika_bench_token_0123456789"
GAME_KEY = "game_bench_key_0123456789"
#: A public image URL (documentation domain): the web process checks it, no worker ever fetches it.
IMAGE_URL = "https://cdn.example.com/images/plane.jpg"

_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER")


class BenchError(RuntimeError):
    """A benchmark could not be carried out (a process did not start, a wait ran out)."""


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment for a service process: no settings leak in from this shell or `.env`."""
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.update(PYTHONUNBUFFERED="1", I2V_DOTENV="0")
    env.update(extra)
    return env


def watch(seconds: float, check: Callable[[], None]) -> float:
    """Let ``seconds`` pass, calling ``check`` about once a second (it raises to stop early).

    Returns:
        The wall seconds that passed, which the caller divides by rather than ``seconds``.
    """
    started = time.monotonic()
    deadline = started + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        check()
    return time.monotonic() - started


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- /proc -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """``Pss``, ``Rss`` and private (``Private_Clean`` + ``Private_Dirty``) memory of a process, in kB."""
    found = {"Pss": 0, "Rss": 0, "Private": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in ("Pss", "Rss"):
                    found[name] = int(rest.split()[0])
                elif name in ("Private_Clean", "Private_Dirty"):
                    found["Private"] += int(rest.split()[0])
    except OSError:
        pass
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def mem_available_mb() -> float:
    """MemAvailable of the machine, in MB."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_info(redis_version: str = "") -> dict[str, str]:
    """Cores, memory, CPU model, kernel, and the versions of what the numbers depend on."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        total_kb = int(fh.readline().split()[1])
    versions = {}
    for package in ("flask", "gunicorn", "rq", "redis", "hiredis", "flask-smorest", "marshmallow", "requests"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    info = {
        "cores": str(os.cpu_count()),
        "cpu": model or platform.processor() or "unknown",
        "memory": f"{total_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis-server": redis_version or redis_server_version(),
        "wrk": wrk_version(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    # The commit and the state of the tree are in the stamp on the file's first line (bench/stamp.py).
    return info


def redis_server_version() -> str:
    """The version the Redis server that ``start_redis`` runs reports."""
    binary = find_redis_server()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


def wrk_version() -> str:
    """The first line wrk prints about itself."""
    binary = shutil.which("wrk")
    if binary is None:
        return "not installed"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


# -- processes -------------------------------------------------------------------------------------


@dataclass
class Service:
    """A process started for a benchmark (a Procfile command, or any argv), with its log file."""

    name: str
    command: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    _log: object | None = field(default=None, repr=False)

    def start(self) -> Service:
        """Start it in a session of its own, as the platform would (``sh -c 'exec ...'``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = spawn(self.command, self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        _STARTED.append(self)
        return self

    @property
    def pid(self) -> int:
        """The main pid (the shell ``exec``s the command, so this is the command itself)."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the main process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The main pid and every live descendant."""
        if not self.alive():
            return []
        return [self.pid, *descendants(self.pid)]

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process of the tree at once; returns how many got it."""
        sent = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                sent += 1
        return sent

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the tree, then SIGKILL whatever is left of it and of its process group."""
        if self.proc is None:
            return
        if self.alive():
            self.signal_all(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole tree and its process group (which this run created)."""
        if self.proc is None:
            return
        self.signal_all(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def tail(self, chars: int = 1500) -> str:
        """The end of the log, for error messages."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


_STARTED: list[Service] = []
_REDIS: list[subprocess.Popen] = []


def procfile_command(kind: str) -> str:
    """The command of a Procfile process type."""
    return read_procfile()[kind]


def start_service(kind: str, env: dict[str, str], log_dir: Path, command: str | None = None) -> Service:
    """Start a Procfile process (or ``command``) with ``env``, logging to ``log_dir/kind.log``."""
    return Service(kind, command or procfile_command(kind), env, log_dir / f"{kind}.log").start()


def stop_everything() -> None:
    """Stop every process this run started (service processes first, then the Redis servers)."""
    while _STARTED:
        _STARTED.pop().stop(timeout=5)
    while _REDIS:
        proc = _REDIS.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@dataclass
class PrivateRedis:
    """A redis-server of this run, as ``make run`` starts it (AOF on, noeviction)."""

    proc: subprocess.Popen
    url: str
    client: Redis

    @property
    def pid(self) -> int:
        """The server's pid."""
        return self.proc.pid

    def version(self) -> str:
        """``redis_version`` of INFO."""
        return str(self.client.info("server").get("redis_version", ""))

    def stop(self) -> None:
        """Stop the server."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc in _REDIS:
            _REDIS.remove(self.proc)


def private_redis(data_dir: Path) -> PrivateRedis:
    """Start a private redis-server on a free port of 127.0.0.1 with its data under ``data_dir``."""
    shutil.rmtree(data_dir, ignore_errors=True)
    proc, url = start_redis(data_dir)
    _REDIS.append(proc)
    return PrivateRedis(proc, url, Redis.from_url(url))


def wait_http(url: str, timeout: float, service: Service | None = None, method: str = "GET", **kwargs) -> None:
    """Wait until ``url`` answers below 500; fail early if ``service`` exits."""

    def answered() -> bool:
        if service is not None and not service.alive():
            raise BenchError(f"{service.name} exited while starting:\n{service.tail()}")
        try:
            return requests.request(method, url, timeout=2, **kwargs).status_code < 500
        except requests.RequestException:
            return False

    wait_until(answered, timeout, f"{url} to answer", interval=0.1)


def local_url(port: int) -> str:
    """``http://127.0.0.1:port``."""
    return f"http://127.0.0.1:{port}"


def new_port() -> int:
    """A free port on 127.0.0.1."""
    return free_port()


def python() -> str:
    """This interpreter (the project's virtual environment when run through make)."""
    return sys.executable


# -- formatting ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    """``pass`` or ``FAIL`` for a target table."""
    return "pass" if ok else "**FAIL**"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """One part's results: markdown for RESULTS.md and target verdicts for the summary."""

    title: str
    markdown: str
    targets: list[tuple[str, str, str, bool]] = field(default_factory=list)  # (target, wanted, measured, ok)
    data: dict[str, object] = field(default_factory=dict)


# -- the service against the provider fakes --------------------------------------------------------


@contextlib.contextmanager
def provider_fakes(pika_duration: float) -> Iterator[tuple[Any, Any, Any]]:
    """Fake Replicate, Pika and GAME on 127.0.0.1 (real HTTP servers, in threads of this process)."""
    from tests.fakes import FakeGame, FakePika, FakeReplicate

    replicate = FakeReplicate(token=REPLICATE_TOKEN, duration=0.05)
    pika = FakePika(token=PIKA_TOKEN, duration=pika_duration)
    game = FakeGame(api_key=GAME_KEY)
    started = []
    try:
        for fake in (replicate, pika, game):
            fake.start()
            started.append(fake)
        yield replicate, pika, game
    finally:
        for fake in reversed(started):
            fake.stop()


def service_env(redis_url: str, fakes: tuple[Any, Any, Any], api_key: str, scratch: Path, **extra: str) -> dict:
    """Settings that point web, worker and janitor at ``redis_url`` and the fakes, with API keys on."""
    replicate, pika, game = fakes
    return base_env(
        REDIS_URL=redis_url,
        REPLICATE_API_TOKEN=REPLICATE_TOKEN,
        REPLICATE_BASE_URL=replicate.url,
        PIKAPI_BEARER_TOKEN=PIKA_TOKEN,
        PIKAPI_BASE_URL=pika.base_url,
        GAME_API_KEY=GAME_KEY,
        MEDIA_NAME_SECRET=secrets.token_hex(32),
        CALLBACK_API_URL=f"{game.url}/requests",
        I2V_API_KEYS=api_key,
        HOST="127.0.0.1",
        PORT=str(new_port()),
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(scratch / "metrics"),
        MEDIA_DIR=str(scratch / "media"),
        **extra,
    )


class Client:
    """The caller's side of the API, with one API key."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def submit(self, request_id: str, image_url: str = IMAGE_URL) -> requests.Response:
        """``POST /api/v1/i2v``."""
        return self.session.post(
            f"{self.base_url}/api/v1/i2v",
            json={"image_id": image_url},
            headers={"x-request-id": request_id},
            timeout=10,
        )

    def status(self, request_id: str) -> dict[str, Any]:
        """``GET /api/v1/i2v/{id}``."""
        resp = self.session.get(f"{self.base_url}/api/v1/i2v/{request_id}", timeout=10)
        resp.raise_for_status()
        return resp.json()


def workers_registered(redis: Redis, queue: str = "i2v") -> set[str]:
    """Names of the RQ workers registered for ``queue`` (the set holds their keys, ``rq:worker:<name>``)."""
    members = (m.decode() if isinstance(m, bytes) else m for m in redis.smembers(f"rq:workers:{queue}"))
    return {m.removeprefix("rq:worker:") for m in members}


def parse_iso(text: str) -> float:
    """Unix time of a ``2024-01-01T00:00:00.123456Z`` timestamp (as the fakes write them)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (float("0." + fraction) if fraction else 0.0)
