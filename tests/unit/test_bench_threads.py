"""The pieces of the threaded-worker benchmark: the dyno-sized cgroup, the HTTPS fake Pika, sizing."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from bench import cgroup, common, sizing, threads
from bench.__main__ import with_sizing
from bench.common import Section
from bench.tls import HTTPSFakePika, PrivateCA
from tests.helpers import wait_for


def v1_tree(root: Path) -> Path:
    """A cgroup v1 layout with memory and pids controllers (as /sys/fs/cgroup has them)."""
    for controller in ("memory", "pids"):
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
    return root


def test_a_v1_box_sets_both_limits_and_reads_the_kernel_counters(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)

    box = cgroup.Box.create("dyno", 512 * 2**20, 256, root=root)

    assert box.version == 1
    assert (root / "memory" / "dyno" / "memory.limit_in_bytes").read_text() == str(512 * 2**20)
    assert (root / "pids" / "dyno" / "pids.max").read_text() == "256"
    memory, pids = root / "memory" / "dyno", root / "pids" / "dyno"
    (memory / "memory.max_usage_in_bytes").write_text("400000000\n")
    (memory / "memory.usage_in_bytes").write_text("300000000\n")
    (memory / "memory.failcnt").write_text("7\n")
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (memory / "memory.stat").write_text("cache 1048576\nrss 299000000\n")
    (pids / "pids.events").write_text("max 3\n")
    (pids / "pids.peak").write_text("256\n")
    reading = box.read()
    assert (reading.memory_peak_bytes, reading.memory_limit_hits, reading.oom_kills) == (400000000, 7, 2)
    assert (reading.tasks_limit, reading.tasks_peak, reading.tasks_refused) == (256, 256, 3)
    assert reading.page_cache_bytes == 1048576


def test_a_v2_hierarchy_with_both_controllers_is_preferred(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("cpu io memory pids\n")

    box = cgroup.Box.create("dyno", 2**29, 256, root=tmp_path)

    assert box.version == 2
    assert (tmp_path / "unified" / "dyno" / "memory.max").read_text() == str(2**29)
    assert (tmp_path / "unified" / "dyno" / "pids.max").read_text() == "256"
    (tmp_path / "unified" / "dyno" / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert (box.read().memory_limit_hits, box.read().oom_kills) == (4, 1)


def test_no_controllers_means_no_box_and_says_which_is_missing(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").write_text("")

    with pytest.raises(cgroup.CgroupUnavailable, match="no cgroup v1 pids controller"):
        cgroup.Box.create("dyno", 2**29, 256, root=tmp_path)
    assert not (tmp_path / "memory" / "dyno").exists()


def test_the_wrapped_command_moves_its_shell_into_every_controller_first(tmp_path: Path) -> None:
    box = cgroup.Box.create("dyno", 2**29, 256, root=v1_tree(tmp_path))

    command = box.wrap("rq worker-pool --num-workers ${WORKER_PROCESSES:-2}")

    assert f"echo $$ > {tmp_path}/memory/dyno/cgroup.procs" in command
    assert f"echo $$ > {tmp_path}/pids/dyno/cgroup.procs" in command
    assert command.index("cgroup.procs") < command.index("exec rq worker-pool")


def test_the_https_fake_pika_is_trusted_through_the_bundle_and_counts_handshakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.clients.http import PollError, PollPool

    def pool(base_url: str) -> PollPool:
        return PollPool(base_url, size=1, connect_timeout=5, read_timeout=5, wait_timeout=5)

    ca = PrivateCA(tmp_path)
    for name, value in ca.env().items():
        monkeypatch.setenv(name, value)
    with HTTPSFakePika(ca, token="t") as pika:
        assert pika.base_url.startswith("https://127.0.0.1:")
        polls = pool(pika.base_url)
        for _ in range(3):
            assert polls.get(f"{pika.base_url}/jobs/nope", {"Authorization": "Bearer t"}).status == 404
        counts = pika.tls
        # Three polls over one kept-alive connection: one handshake.
        assert (counts.connections, counts.handshakes, counts.failed) == (1, 1, 0)

        monkeypatch.delenv("REQUESTS_CA_BUNDLE")
        with pytest.raises(PollError, match="PEER_FAILED_VERIFICATION"):
            pool(pika.base_url).get(f"{pika.base_url}/jobs/nope", {"Authorization": "Bearer t"})
        # libcurl checks the chain once the handshake is done, then closes the connection: the
        # server counts a second connection, and the request (with its token) never reaches it.
        wait_for(lambda: pika.tls.connections == 2, timeout=5, message="the refused connection to be counted")
        assert len(pika.requests) == 3


def test_socket_owners_finds_the_process_behind_a_local_port() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    try:
        port = client.getsockname()[1]
        assert threads.socket_owners([os.getpid()]).get(port) == os.getpid()
        assert port not in threads.socket_owners([])
    finally:
        client.close()
        server.close()


COSTS = sizing.Costs(
    base_mb=30.0,
    request_kb=200.0,
    connections=6.0,
    extra_threads=4.0,
    cpu_us=50.0,
    measured_with="2 x 1000",
    default_processes=2,
    default_threads=100,
)


def test_dynos_are_sized_by_tasks_or_memory_with_at_most_1000_threads_a_process() -> None:
    standard_1x, _, performance_m, _ = sizing.DYNOS

    small = sizing.fit(standard_1x, COSTS)
    large = sizing.fit(performance_m, COSTS)

    # 256 tasks x 0.9 - 2 x 4 own threads - 1 parent = 221 threads, over 2 processes.
    assert (small.processes, small.threads, small.bound) == (2, 110, "processes + threads")
    assert small.connections == 12
    # 2,560 MB x 0.8 - 2 x 30 MB of bases leaves room for 10,178 requests of 200 KB, over the
    # 2 x 1,000 threads WORKER_THREADS allows: 11 processes, whose bases leave room for 8,796.
    assert (large.processes, large.threads, large.bound) == (11, 799, "memory")
    assert large.memory_mb <= performance_m.memory_mb * sizing.MEMORY_SHARE


def test_the_redis_plan_is_the_smallest_that_takes_the_connections() -> None:
    assert sizing.plan_for(20) == "mini"
    assert sizing.plan_for(41) == "premium-1"
    assert sizing.plan_for(1_000) == "premium-5"
    assert sizing.plan_for(10**6) == "over every plan"


def test_the_sizing_section_comes_after_the_capacity_part() -> None:
    data = {
        "default_threads": 100,
        "default_processes": 2,
        "threaded": {
            "shape": {"processes": 2, "threads": 1000},
            "idle": {"pss_kb": 60 * 1024},
            "mixed": {
                "pss_kb": 60 * 1024 + 2000 * 200,
                "in_flight": 2000,
                "redis_per_process": [6, 6, 0],
                "threads": 2010,
            },
            "polling": {"cpu_us_per_request_s": 40.0},
        },
    }
    parts = [Section("1. Ingest", ""), Section("3. Capacity", ""), Section("5. Many requests", "", data=data)]

    ordered = with_sizing(parts, quick=False)

    assert [s.title for s in ordered] == ["1. Ingest", "3. Capacity", "4. Sizing", "5. Many requests"]
    # 3 in flight need one process of a Standard-1X: 6 connections, 10 for web and scheduler.
    assert "| 100 | 60 s | 3 | 1 (16 conn., mini) |" in ordered[2].markdown
    assert with_sizing(parts[:1], quick=False) == parts[:1]


def test_watch_checks_about_once_a_second_and_stops_when_the_check_raises() -> None:
    """The measuring window of parts 4 and 5: the memory guard runs each second and can end it early."""
    calls: list[float] = []
    wall = common.watch(1.5, lambda: calls.append(time.monotonic()))
    assert 1.5 <= wall < 2.5
    assert len(calls) == 2  # after 1 s, then after the last 0.5 s

    def tight() -> None:
        raise common.BenchError("memory is short")

    started = time.monotonic()
    with pytest.raises(common.BenchError, match="memory is short"):
        common.watch(30, tight)
    assert time.monotonic() - started < 5
