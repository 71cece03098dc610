"""Part 5, many requests per worker process: the threaded pool against the one-request-per-process pool.

Both pools run in the same run, the same way: the Procfile's ``worker`` line, with
``WORKER_PROCESSES`` and ``WORKER_THREADS`` in its environment, beside ``web`` and ``scheduler``,
against the fakes with Pika served over HTTPS by a CA of the run (bench/tls.py). Each pool gets
its requests in two batches: the first is measured in its initial wait, then polling every
POLL_INTERVAL; then the second arrives, so half the requests are in their initial wait and half
polling, and the memory (PSS of every process of the pool), CPU and Redis connections are read.
In the threaded pool some videos then become ready at known moments while the others stay in
flight (the callback lag under load); new requests take their threads, and the worker process
holding the most requests is SIGKILLed: each of its requests must resume on a live worker within
two minutes, with no second Pika submission or Replicate prediction. Last every video becomes
ready, and every request must call back exactly once.

Last, each pool runs inside a Standard-1X-sized cgroup (512 MB, 256 tasks): the threaded one at its
default WORKER_PROCESSES x WORKER_THREADS, the other with as many processes as 512 MB holds, each
with as many requests as it takes; the cgroup's own counters say its peak memory, whether the
kernel OOM-killed anything and whether a thread was refused.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Worker
from rq.job import Job, JobStatus

from bench import common
from bench.capacity import guard_memory, stages, submit_all, waiting_count
from bench.cgroup import Box, CgroupUnavailable
from bench.common import BenchError, Section, table
from bench.tls import HTTPSFakePika, PrivateCA

#: What issue 13 asks of the threaded worker.
TARGET_IN_FLIGHT = 2000
TARGET_PSS_KB = 250.0
TARGET_CPU_POLLING_US = 60.0
TARGET_CPU_WAITING_US = 10.0
TARGET_REDIS_PER_PROCESS = 10
TARGET_KILLED = 1000
TARGET_STANDARD_1X = 200
RESUME_LIMIT = 120.0
#: Heroku Standard-1X.
DYNO_MEMORY = 512 * 1024 * 1024
DYNO_TASKS = 256
#: Single-request processes that fit a Standard-1X (each costs about 24 MB PSS; part 3).
DYNO_SINGLE_PROCESSES = 16
THREAD_ERRORS = re.compile(r"can't start new thread|Resource temporarily unavailable|Cannot allocate memory")


@dataclass(frozen=True)
class Shape:
    """A pool's size and the load it gets."""

    label: str
    processes: int
    threads: int
    load: int  # requests in flight, in two equal batches
    lag_requests: int = 0  # requests of the load whose videos are made ready at known moments
    kill: bool = False


@dataclass(frozen=True)
class Plan:
    """The sizes and timings of a run (full or quick)."""

    timings: dict[str, str]
    initial_wait: float
    poll_interval: float
    window: float
    settle: float
    process_pool: Shape
    threaded: Shape


def plan(quick: bool) -> Plan:
    """Full run: 100 single-request processes against 2 processes of 1,000 threads holding 2,000.

    Two full processes: the one SIGKILLed holds 1,000 requests, and the pool's replacement for it
    has the threads to resume them all.
    """
    if quick:
        return Plan(
            timings={
                "INITIAL_WAIT_TIME": "15",
                "POLL_INTERVAL": "3",
                "WORKER_HEARTBEAT_INTERVAL": "3",
                "JANITOR_INTERVAL": "1",
            },
            initial_wait=15.0,
            poll_interval=3.0,
            window=4.0,
            settle=1.0,
            process_pool=Shape("one request per process", 8, 1, 8),
            threaded=Shape("threaded", 2, 40, 80, lag_requests=8, kill=True),
        )
    # INITIAL_WAIT_TIME, POLL_INTERVAL, WORKER_HEARTBEAT_INTERVAL, JANITOR_INTERVAL: the defaults.
    return Plan(
        timings={},
        initial_wait=60.0,
        poll_interval=10.0,
        # Long enough to hold what comes every 30 s (a heartbeat, a batch of cancel reads) and three polls.
        window=30.0,
        settle=3.0,
        process_pool=Shape("one request per process", 100, 1, 100),
        threaded=Shape("threaded", 2, 1000, TARGET_IN_FLIGHT, lag_requests=40, kill=True),
    )


# -- what the tree supports ------------------------------------------------------------------------


def default_threads(env: dict[str, str]) -> int | None:
    """``WORKER_THREADS``' default when this tree's settings know it, else None (one job per process)."""
    from config import load_settings

    bare = {k: v for k, v in env.items() if k not in ("WORKER_THREADS", "WORKER_PROCESSES")}
    try:
        probe = load_settings({**bare, "WORKER_THREADS": "2"}, dotenv=False)
        default = load_settings(bare, dotenv=False)
    except Exception:  # a tree whose settings refuse the variable does not have threads
        return None
    if getattr(probe, "worker_threads", None) != 2:
        return None
    return int(default.worker_threads)


def default_processes() -> int:
    """``WORKER_PROCESSES``' default: the fallback in the Procfile's worker line."""
    found = re.search(r"\$\{WORKER_PROCESSES:-(\d+)\}", common.procfile_command("worker"))
    return int(found[1]) if found else 1


# -- readings --------------------------------------------------------------------------------------


def socket_owners(pids: list[int]) -> dict[int, int]:
    """Local TCP port -> pid, for the sockets these processes hold (from /proc, no extra package)."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inode_pid.setdefault(target[8:-1], pid)
    owners: dict[int, int] = {}
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table_path) as fh:
            next(fh)
            for line in fh:
                parts = line.split()
                pid = inode_pid.get(parts[9])
                if pid is not None:
                    owners[int(parts[1].rsplit(":", 1)[1], 16)] = pid
    return owners


def redis_connections(redis: Redis, pids: list[int]) -> dict[int, int]:
    """Redis connections per process of ``pids`` (CLIENT LIST matched to the processes' sockets)."""
    owners = socket_owners(pids)
    counts = dict.fromkeys(pids, 0)
    for client in redis.client_list():
        port = int(str(client.get("addr", ":0")).rsplit(":", 1)[1])
        if port in owners:
            counts[owners[port]] += 1
    return counts


def thread_count(pid: int) -> int:
    """Threads of a process now."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def window(pool: common.Service, redis: common.PrivateRedis, seconds: float, what: str) -> dict[str, Any]:
    """CPU of every process of the pool over ``seconds`` (process CPU time, not wall), then memory,
    Redis connections per process, requests in flight and their stages at both ends."""
    stages_at_start = stages(redis.client)
    pids = pool.pids()
    before = {pid: common.cpu_seconds(pid) for pid in pids}
    wall = common.watch(seconds, guard_memory)
    cpu = sum(max(0.0, common.cpu_seconds(pid) - before[pid]) for pid in pids)
    memory = [common.memory_kb(pid) for pid in pids]
    connections = redis_connections(redis.client, pids)
    in_flight = waiting_count(redis.client)
    return {
        "what": what,
        "window_s": wall,
        "stages_at_start": stages_at_start,
        "stages_at_end": stages(redis.client),
        "in_flight": in_flight,
        "processes": len(pids),
        "threads": sum(thread_count(pid) for pid in pids),
        "cpu_s": cpu,
        "cpu_us_per_request_s": cpu / wall / max(in_flight, 1) * 1e6,
        "pss_kb": sum(m["Pss"] for m in memory),
        "pss_kb_per_request": sum(m["Pss"] for m in memory) / max(in_flight, 1),
        "redis_per_process": sorted(connections.values(), reverse=True),
    }


# -- one pool --------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What every measured pool shares: Redis, fakes, the API, settings."""

    redis: common.PrivateRedis
    replicate: Any
    pika: HTTPSFakePika
    game: Any
    env: dict[str, str]
    client: common.Client
    api_key: str
    base: str
    out: Path


def pool_env(setup: Setup, processes: int, threads: int | None) -> dict[str, str]:
    """The worker's environment for a pool size (WORKER_THREADS only where the tree knows it)."""
    env = {**setup.env, "WORKER_PROCESSES": str(processes)}
    if threads is not None:
        env["WORKER_THREADS"] = str(threads)
    return env


def start_pool(setup: Setup, env: dict[str, str], processes: int, name: str, box: Box | None = None) -> common.Service:
    """Start the Procfile's worker line (inside ``box`` if given) and wait for its workers."""
    command = common.procfile_command("worker")
    pool = common.start_service("worker", env, setup.out / name, command=box.wrap(command) if box else None)

    def registered() -> bool:
        guard_memory()
        if not pool.alive():
            raise BenchError(f"the worker pool exited:\n{pool.tail()}")
        return len(common.workers_registered(setup.redis.client)) >= processes

    common.wait_until(registered, 60 + processes, f"{processes} worker processes to register", interval=0.5)
    return pool


def fill(setup: Setup, pool: common.Service, ids: list[str], wanted: int, timeout: float) -> float:
    """Submit ``ids`` and wait until ``wanted`` requests are in flight; seconds it took."""
    started = time.monotonic()
    submit_all(lambda: common.Client(setup.base, setup.api_key), ids)

    def enough() -> bool:
        guard_memory()
        if not pool.alive():
            raise BenchError(f"the worker pool exited:\n{pool.tail()}")
        return waiting_count(setup.redis.client) >= wanted

    common.wait_until(enough, timeout, f"{wanted} requests in flight", interval=1.0)
    return time.monotonic() - started


def polling(setup: Setup, wanted: int, timeout: float) -> None:
    """Wait until ``wanted`` requests are past their initial wait."""

    def enough() -> bool:
        guard_memory()
        return stages(setup.redis.client).get("processing/polling", 0) >= wanted

    common.wait_until(enough, timeout, f"{wanted} requests to be polling", interval=1.0)


def measure(setup: Setup, name: str, shape: Shape, threads: int | None, p: Plan) -> dict[str, Any]:
    """Run one pool through both batches (and, per ``shape``, lag and a SIGKILL); its readings."""
    redis, pika = setup.redis, setup.pika
    redis.client.flushall()
    for fake in (setup.replicate, pika, setup.game):
        fake.reset()
    pika.reset_tls()
    pool = start_pool(setup, pool_env(setup, shape.processes, threads), shape.processes, name)
    result: dict[str, Any] = {"shape": vars(shape), "threads_setting": threads}
    try:
        idle = [common.memory_kb(pid)["Pss"] for pid in pool.pids()]
        result["idle"] = {
            "pss_kb": sum(idle),
            "processes": len(idle),
            "threads": sum(thread_count(pid) for pid in pool.pids()),
            "redis_per_process": sorted(redis_connections(redis.client, pool.pids()).values(), reverse=True),
        }
        half = shape.load // 2
        first = [f"{name}-a-{i}" for i in range(half)]
        second = [f"{name}-b-{i}" for i in range(shape.load - half)]
        ramp_budget = 60 + shape.load * 0.2
        submitted = time.monotonic()
        result["ramp_s"] = fill(setup, pool, first, half, ramp_budget)
        time.sleep(p.settle)
        # The whole window before the first request's first poll (its wait began after its submission).
        before_polls = submitted + p.initial_wait - p.settle - time.monotonic()
        result["waiting"] = window(pool, redis, max(p.settle, min(p.window, before_polls)), "initial wait")
        polling(setup, half, p.initial_wait + ramp_budget)
        time.sleep(p.settle)
        result["polling"] = window(pool, redis, p.window, "polling")
        result["ramp2_s"] = fill(setup, pool, second, shape.load, ramp_budget)
        time.sleep(p.settle)
        result["mixed"] = window(pool, redis, p.window, "half waiting, half polling")
        result["tls"] = vars(pika.tls)
        result["pika_polls"] = sum(pika.polls.values())
        if shape.lag_requests:
            result["lag"] = lag_under_load(setup, first[: shape.lag_requests], p)
            # Back to the full load, so that every thread is busy again when a process is killed.
            refill = [f"{name}-c-{i}" for i in range(shape.lag_requests)]
            fill(setup, pool, refill, shape.load, ramp_budget)
        if shape.kill:
            result["kill"] = kill_busiest(setup, pool)
        result["callbacks"] = finish_all(setup)
    finally:
        pool.kill()
    return result


def lag_under_load(setup: Setup, ids: list[str], p: Plan) -> dict[str, Any]:
    """Make the videos of ``ids`` (polling requests of the load) ready at known moments while the rest
    stays in flight; the lag is each callback's arrival minus that moment."""
    pika, game = setup.pika, setup.game
    rng = random.Random(13)
    job_of = {rid: setup.client.status(rid)["provider"]["job_id"] for rid in ids}
    in_flight = waiting_count(setup.redis.client)
    started = time.time()
    # Over two poll intervals, one moment at random in each of len(ids) equal slices of them, given to
    # the requests in random order: the requests poll in step (they were submitted together), so
    # independent moments could bunch in one part of the poll cycle and move the median by a second
    # from run to run; evenly spread ones sample the whole cycle.
    width = 2 * p.poll_interval / len(ids)
    slots = [started + (i + rng.random()) * width for i in range(len(ids))]
    rng.shuffle(slots)
    moments = sorted(zip(slots, ids, strict=True))
    ready_at: dict[str, float] = {}
    for moment, rid in moments:
        time.sleep(max(0.0, moment - time.time()))
        pika.finish_now(job_of[rid])
        ready_at[rid] = time.time()
    common.wait_until(
        lambda: all(game.callbacks_for(rid) for rid in ids),
        4 * p.poll_interval + 60,
        f"{len(ids)} lag callbacks",
        interval=0.5,
    )
    lags = [game.callbacks_for(rid)[0].at - ready_at[rid] for rid in ids]
    return {
        "requests": len(ids),
        "in_flight_during": in_flight,
        "median_s": statistics.median(lags),
        "max_s": max(lags),
        "lags": lags,
    }


def kill_busiest(setup: Setup, pool: common.Service) -> dict[str, Any]:
    """SIGKILL the worker process running the most requests; time their resumption elsewhere."""
    redis = setup.redis.client
    keys = [k.decode() for k in redis.scan_iter(match="i2v:req:*", count=5000)]
    job_ids = ["i2v-" + key.rsplit(":", 1)[-1] for key in keys]
    holders: dict[str, list[str]] = {}
    for job_id, job in zip(job_ids, Job.fetch_many(job_ids, connection=redis), strict=True):
        if job is not None and job.get_status(refresh=False) == JobStatus.STARTED and job.worker_name:
            holders.setdefault(job.worker_name, []).append(job_id)
    if not holders:
        raise BenchError("no worker is running a request")
    victim, held = max(holders.items(), key=lambda kv: len(kv[1]))
    pids = {w.name: w.pid for w in Worker.all(connection=redis)}
    pid = pids.get(victim)
    if pid is None or pid not in pool.pids():
        raise BenchError(f"worker {victim} has no live process of the pool (pid {pid})")
    generates_before = len(setup.pika.generates)
    creates_before = len(setup.replicate.creates)
    killed_at = time.monotonic()
    os.kill(pid, 9)
    first_seen: dict[str, float] = {}
    deadline = killed_at + RESUME_LIMIT + 60  # past the target too, to size a miss
    while time.monotonic() < deadline and len(first_seen) < len(held):
        guard_memory()
        now = time.monotonic() - killed_at
        for job_id, job in zip(held, Job.fetch_many(held, connection=redis), strict=True):
            if job_id in first_seen or job is None:
                continue
            if job.get_status(refresh=False) == JobStatus.STARTED and job.worker_name not in (None, victim):
                first_seen[job_id] = now
        time.sleep(1.0)
    times = sorted(first_seen.values())
    return {
        "held": len(held),
        "holders": sorted((len(v) for v in holders.values()), reverse=True),
        "resumed": len(first_seen),
        "first_s": times[0] if times else None,
        "median_s": statistics.median(times) if times else None,
        "last_s": times[-1] if times else None,
        "all_within_s": times[-1] if len(times) == len(held) else None,
        "pika_submissions_after": len(setup.pika.generates) - generates_before,
        "replicate_creates_after": len(setup.replicate.creates) - creates_before,
    }


def finish_all(setup: Setup) -> dict[str, Any]:
    """Finish every Pika job; each request must call back exactly once."""
    pika, game, redis = setup.pika, setup.game, setup.redis.client
    wanted = len(list(redis.scan_iter(match="i2v:req:*", count=5000)))
    for job_id in list(pika.jobs):
        pika.finish_now(job_id)
    with contextlib.suppress(BenchError):
        common.wait_until(lambda: len(game.callbacks) >= wanted, 120, f"{wanted} callbacks", interval=1.0)
    time.sleep(2)  # a duplicate would show up now
    per_request: dict[str, int] = {}
    for cb in game.callbacks:
        per_request[cb.request_id] = per_request.get(cb.request_id, 0) + 1
    return {
        "requests": wanted,
        "called_back": len(per_request),
        "duplicates": sum(c - 1 for c in per_request.values() if c > 1),
        "pika_submissions": len(pika.generates),
        "replicate_creates": len(setup.replicate.creates),
    }


# -- a Standard-1X dyno ----------------------------------------------------------------------------


def in_a_dyno(
    setup: Setup, label: str, processes: int, threads: int | None, sizes: dict[str, str], p: Plan
) -> dict[str, Any]:
    """A pool (``sizes``: its WORKER_* variables, none for the defaults) in a 512 MB / 256-task cgroup,
    holding as many requests as it has room for (``processes`` x ``threads``)."""
    redis = setup.redis
    redis.client.flushall()
    for fake in (setup.replicate, setup.pika, setup.game):
        fake.reset()
    capacity = processes * (threads or 1)
    box = Box.create(f"i2v-bench-{os.getpid()}-{label}", DYNO_MEMORY, DYNO_TASKS)
    env = {k: v for k, v in setup.env.items() if k not in ("WORKER_PROCESSES", "WORKER_THREADS")} | sizes
    pool: common.Service | None = None
    result: dict[str, Any] = {"processes": processes, "threads": threads or 1, "requests": capacity}
    try:
        pool = start_pool(setup, env, processes, f"dyno-{label}", box=box)
        ids = [f"dyno-{label}-{i}" for i in range(capacity)]
        with contextlib.suppress(BenchError):  # a pool that holds fewer is reported as such
            result["ramp_s"] = fill(setup, pool, ids, capacity, 60 + capacity * 0.3)
        time.sleep(p.settle)
        if threads and threads > 1:
            # The threaded pool's peak may come once they all poll (connections and TLS buffers of
            # many threads); a single-request process's does not change, and waiting costs a minute.
            with contextlib.suppress(BenchError):
                polling(setup, waiting_count(redis.client), p.initial_wait + 30)
        result["window"] = window(pool, redis, p.window, "in a dyno")
        result["alive"] = pool.alive()
        result["box"] = vars(box.read())
        result["thread_errors"] = len(THREAD_ERRORS.findall(pool.tail(10_000_000)))
    finally:
        if pool is not None:
            pool.kill()
        box.remove()
    return result


# -- the part --------------------------------------------------------------------------------------


@contextlib.contextmanager
def https_fakes(ca: PrivateCA) -> Iterator[tuple[Any, HTTPSFakePika, Any]]:
    """Fake Replicate and GAME as usual, fake Pika over HTTPS.

    The fake Replicate's rate limits are off: at Replicate's 600 creates a minute the 1,000 requests
    of a half would take two minutes to start, and the first would be polling before the last
    waited. That ceiling is the sizing table's (part 4), not this part's subject.
    """
    from tests.fakes import FakeGame, FakeReplicate

    fakes = [
        FakeReplicate(token=common.REPLICATE_TOKEN, duration=0.05, create_limit=None, other_limit=None),
        HTTPSFakePika(ca, token=common.PIKA_TOKEN, duration=3600),
        FakeGame(api_key=common.GAME_KEY),
    ]
    started = []
    try:
        for fake in fakes:
            fake.start()
            started.append(fake)
        yield fakes[0], fakes[1], fakes[2]  # type: ignore[misc]
    finally:
        for fake in reversed(started):
            fake.stop()


def run(quick: bool) -> Section:
    """Measure both pools side by side and return the section of RESULTS.md."""
    p = plan(quick)
    out = common.OUT_DIR / "threads"
    out.mkdir(parents=True, exist_ok=True)
    redis = common.private_redis(out / "redis")
    ca = PrivateCA(out / "tls")
    api_key = secrets.token_urlsafe(24)
    data: dict[str, Any] = {"plan": {"timings": p.timings, "window_s": p.window}}
    try:
        with https_fakes(ca) as (replicate, pika, game):
            env = common.service_env(
                redis.url, (replicate, pika, game), api_key, out, CAPTION_POLL_INTERVAL="0.2", **ca.env(), **p.timings
            )
            web = common.start_service("web", env, out)
            common.start_service("scheduler", env, out)
            base = common.local_url(int(env["PORT"]))
            common.wait_http(base + "/healthz", 30, web)
            setup = Setup(redis, replicate, pika, game, env, common.Client(base, api_key), api_key, base, out)
            threads = default_threads(env)
            data["default_threads"] = threads
            data["default_processes"] = default_processes()
            shape = p.threaded
            if threads is None:
                # No WORKER_THREADS in this tree: the same load on single-request processes stands in,
                # so the harness is exercised; a full run would need thousands of processes.
                stand_in = shape.processes * shape.threads if quick else 0
                shape = replace(shape, label=f"{shape.label} (stand-in)", processes=stand_in, threads=1)
            print("bench: threads: one request per process ...", flush=True)
            data["process_pool"] = measure(setup, "process-pool", p.process_pool, 1 if threads else None, p)
            if shape.processes:
                print(f"bench: threads: {shape.processes} x {shape.threads} ...", flush=True)
                data["threaded"] = measure(setup, "threaded", shape, threads and shape.threads, p)
            single = {"WORKER_PROCESSES": str(DYNO_SINGLE_PROCESSES)} | ({"WORKER_THREADS": "1"} if threads else {})
            boxes = [("process-pool", DYNO_SINGLE_PROCESSES, None, single)]
            if threads is not None:
                boxes.append(("threaded", default_processes(), threads, {}))
            for label, processes, per, sizes in boxes:
                print(f"bench: threads: {label} in a Standard-1X cgroup ...", flush=True)
                try:
                    data.setdefault("dyno", {})[label] = in_a_dyno(setup, label, processes, per, sizes, p)
                except CgroupUnavailable as exc:
                    data.setdefault("dyno", {})[label] = {"unavailable": str(exc)}
    finally:
        common.stop_everything()
        redis.stop()
    return report(data, p, quick)


# -- the report ------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = ".0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _ratio(new: float | None, old: float | None) -> str:
    if new is None or old is None or new <= 0 or old <= 0:
        return "-"
    return f"{new / old:.3f}" if new / old < 0.1 else f"{new / old:.2f}"


def polling_cost(m: dict[str, Any]) -> float | None:
    """µs per request-second while polling: the polling window, all of whose requests poll."""
    return m["polling"]["cpu_us_per_request_s"] if "polling" in m else None


def waiting_share(m: dict[str, Any]) -> str:
    """The initial-wait window: its length, and how many of its requests had not polled yet at its start and end."""
    window = m["waiting"]
    start = window["stages_at_start"].get("processing/waiting", 0)
    end = window.get("stages_at_end", {}).get("processing/waiting", 0)
    return f"{window['window_s']:.0f} s; {start} / {end} of {window['in_flight']}"


def side_by_side(old: dict[str, Any], new: dict[str, Any] | None) -> list[list[str]]:
    """The comparison rows: measure, one request per process, threaded, ratio."""

    def both(get: Any, fmt: str = ".0f") -> list[str]:
        a = get(old)
        b = get(new) if new else None
        return [_num(a, fmt), _num(b, fmt), _ratio(b, a)]

    def shape(m: dict[str, Any]) -> str:
        return f"{m['shape']['processes']} x {m['shape']['threads']}"

    def redis_max(m: dict[str, Any]) -> float:
        return max(m["mixed"]["redis_per_process"] or [0])

    def tls(m: dict[str, Any]) -> str:
        return f"{m['pika_polls']} polls / {m['tls']['handshakes']} handshakes ({m['tls']['resumed']} resumed)"

    return [
        ["processes x threads", shape(old), shape(new) if new else "-", ""],
        ["requests in flight (half waiting, half polling)", *both(lambda m: m["mixed"]["in_flight"])],
        ["PSS of all the pool's processes, MB", *both(lambda m: m["mixed"]["pss_kb"] / 1024)],
        ["**PSS per request in flight, KB**", *both(lambda m: m["mixed"]["pss_kb_per_request"])],
        [
            "PSS of the idle pool per process, MB",
            *both(lambda m: m["idle"]["pss_kb"] / m["idle"]["processes"] / 1024, ".1f"),
        ],
        ["**CPU µs per request-second, initial wait**", *both(lambda m: m["waiting"]["cpu_us_per_request_s"], ".1f")],
        ["**CPU µs per request-second, polling**", *both(polling_cost, ".1f")],
        ["**Redis connections per worker process (most)**", *both(redis_max)],
        ["Redis connections of the whole pool", *both(lambda m: sum(m["mixed"]["redis_per_process"]))],
        ["threads of the whole pool", *both(lambda m: m["mixed"]["threads"])],
        ["Pika over TLS since the pool started", tls(old), tls(new) if new else "-", ""],
        ["ramp: first half submitted → in flight, s", *both(lambda m: m["ramp_s"], ".1f")],
        [
            "initial-wait window: length; requests still waiting at its start / end",
            f"{waiting_share(old)}",
            f"{waiting_share(new)}" if new else "-",
            "",
        ],
    ]


def dyno_rows(dyno: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per pool run in the Standard-1X cgroup."""
    rows = []
    for label, d in dyno.items():
        if "unavailable" in d:
            rows.append([label, "-", "-", "-", "-", "-", "-", d["unavailable"]])
            continue
        box, win = d["box"], d["window"]
        rows.append(
            [
                label,
                f"{d['processes']} x {d['threads']}",
                f"**{win['in_flight']}** of {d['requests']}",
                f"**{box['memory_peak_bytes'] / 2**20:.0f}** (cache {(box['page_cache_bytes'] or 0) / 2**20:.0f})",
                f"{box['memory_limit_hits']} / **{box['oom_kills']}**",
                f"{box['tasks_peak']} of {box['tasks_limit']}",
                f"**{box['tasks_refused']}** / {d['thread_errors']}",
                "yes" if d["alive"] else "**no**",
            ]
        )
    return rows


def report(data: dict[str, Any], p: Plan, quick: bool) -> Section:
    """Markdown and verdicts of the part."""
    old, new = data["process_pool"], data.get("threaded")
    threads = data.get("default_threads")
    timing_text = ", ".join(f"{k}={v}" for k, v in p.timings.items()) or (
        "INITIAL_WAIT_TIME, POLL_INTERVAL, WORKER_HEARTBEAT_INTERVAL and JANITOR_INTERVAL at their defaults "
        "(60, 10, 30, 15 s)"
    )
    lines = [
        "**Method.** Both pools are the Procfile's `worker` line with `WORKER_PROCESSES` and `WORKER_THREADS` "
        "set, beside `web` and `scheduler`, on one private Redis, against the fakes; the fake Pika serves HTTPS "
        "with a certificate of a CA made for the run, which the service trusts through a CA bundle file (the "
        "public roots plus that CA) named by `REQUESTS_CA_BUNDLE` and `SSL_CERT_FILE`, as a corporate CA is "
        f"configured. {timing_text}. Each pool gets its requests in two halves, each waiting on a Pika job that "
        "does not finish within the hour. Windows of "
        f"{p.window:g} s, CPU as process time (user + system) of every process of the pool, so other work on "
        "the machine does not count: `initial wait` (the first half, all before their first poll; the window "
        "ends before the first of them polls, so it may be shorter), `polling` "
        "(the first half, all polling every POLL_INTERVAL), then the second half arrives and the `half "
        "waiting, half polling` window reads memory (PSS, `/proc/<pid>/smaps_rollup`, over the pool's parent "
        "and every worker process, bases included) and Redis connections (CLIENT LIST matched to each "
        "process's sockets).",
        "",
    ]
    if threads is None:
        lines += [
            "**This tree has no `WORKER_THREADS` setting**: every worker process runs one request at a time. "
            + (
                "The threaded column is a stand-in of single-request processes carrying the threaded load, "
                "so that the harness runs; it is not the threaded worker."
                if new
                else "The threaded pool was not measured."
            ),
            "",
        ]
    else:
        lines += [f"`WORKER_THREADS` defaults to {threads}, `WORKER_PROCESSES` to {data['default_processes']}.", ""]
    lines += [table(["", "one request per process", "threaded", "ratio"], side_by_side(old, new)), ""]
    lag = new.get("lag") if new else None
    if lag:
        want_median, want_max = p.poll_interval / 2 + 0.3, p.poll_interval + 1
        lines += [
            f"**Callback lag with {lag['in_flight_during']} in flight.** The videos of {lag['requests']} polling "
            "requests of the load were made ready one by one over two poll intervals (one at a random "
            "moment in each of as many equal slices), while "
            "all the others stayed in flight: from each moment to the callback at the fake GAME, median "
            f"**{lag['median_s']:.2f} s**, max **{lag['max_s']:.2f} s** (targets: ≤ POLL_INTERVAL/2 + 0.3 s = "
            f"{want_median:.1f} s, ≤ POLL_INTERVAL + 1 s = {want_max:.1f} s).",
            "",
        ]
    kill = new.get("kill") if new else None
    if kill:
        lines += [
            f"**SIGKILL of the worker process running the most requests** ({kill['held']}; requests per process "
            f"{', '.join(map(str, kill['holders']))}). The pool starts a replacement; the janitor hands the dead "
            "process's executions back once their heartbeat lapses and RQ retries them; a request counts as "
            "resumed once its job is `started` on another worker.",
            "",
            table(
                ["", "value"],
                [
                    ["resumed", f"{kill['resumed']} of {kill['held']}"],
                    [
                        "first / median / last resumed after the kill",
                        " / ".join(_num(kill[k], ".0f", " s") for k in ("first_s", "median_s", "last_s")),
                    ],
                    [
                        "Pika submissions / Replicate predictions after the kill",
                        f"{kill['pika_submissions_after']} / {kill['replicate_creates_after']}",
                    ],
                ],
            ),
            "",
        ]
    if new and new.get("callbacks"):
        cb = new["callbacks"]
        lines += [
            f"Then every Pika job finished: {cb['called_back']} of {cb['requests']} requests called back, "
            f"{cb['duplicates']} duplicate callbacks; {cb['pika_submissions']} Pika submissions and "
            f"{cb['replicate_creates']} Replicate predictions in all.",
            "",
        ]
    dyno = data.get("dyno", {})
    if dyno:
        lines += [
            f"**A Standard-1X dyno.** Each pool in a cgroup limited to {DYNO_MEMORY // 2**20} MB and {DYNO_TASKS} "
            "tasks (processes + threads), as Heroku limits a Standard-1X; the worker line moves itself into it "
            "before it starts, so every process and thread it makes counts. The single-request pool runs "
            f"{DYNO_SINGLE_PROCESSES} processes (what 512 MB holds at part 3's PSS); the threaded pool its "
            "defaults. Each gets as many requests as it has room for; the threaded pool's window waits until "
            "they all poll.",
            "",
            table(
                [
                    "pool",
                    "processes x threads",
                    "in flight",
                    "peak memory MB",
                    "limit hits / OOM kills",
                    "tasks: peak",
                    "tasks refused / thread errors in log",
                    "pool alive",
                ],
                dyno_rows(dyno),
            ),
            "",
            "Peak memory is the cgroup's own high-water mark, page cache included (as the platform counts it). "
            "A limit hit makes the kernel reclaim cache; an OOM kill ends a process.",
        ]
    section = Section("5. Many requests per worker process", "\n".join(lines))
    section.targets = targets(data, p, quick)
    section.data = data
    return section


def targets(data: dict[str, Any], p: Plan, quick: bool) -> list[tuple[str, str, str, bool]]:
    """The verdicts of issue 13's points, for the threaded pool."""
    new = data.get("threaded")
    found: list[tuple[str, str, str, bool]] = []
    if not new or data.get("default_threads") is None:
        return [("threads: the threaded worker measured", "WORKER_THREADS", "not in this tree", False)]
    mixed = new["mixed"]
    found.append(
        (
            "threads: requests in flight, half waiting, half polling",
            f"≥ {TARGET_IN_FLIGHT}" + (" (a quick run holds fewer)" if quick else ""),
            str(mixed["in_flight"]),
            mixed["in_flight"] >= TARGET_IN_FLIGHT,
        )
    )
    pss = mixed["pss_kb_per_request"]
    found.append(
        ("threads: PSS per request in flight", f"≤ {TARGET_PSS_KB:g} KB", f"{pss:.0f} KB", pss <= TARGET_PSS_KB)
    )
    waiting = new["waiting"]["cpu_us_per_request_s"]
    found.append(
        (
            "threads: CPU per request-second, initial wait",
            f"≤ {TARGET_CPU_WAITING_US:g} µs",
            f"{waiting:.1f} µs",
            waiting <= TARGET_CPU_WAITING_US,
        )
    )
    polls = polling_cost(new) or 0.0
    found.append(
        (
            f"threads: CPU per request-second, polling every {p.poll_interval:g} s over TLS",
            f"≤ {TARGET_CPU_POLLING_US:g} µs",
            f"{polls:.1f} µs",
            polls <= TARGET_CPU_POLLING_US,
        )
    )
    most = max(mixed["redis_per_process"] or [0])
    found.append(
        (
            "threads: Redis connections per worker process",
            f"≤ {TARGET_REDIS_PER_PROCESS}",
            str(most),
            most <= TARGET_REDIS_PER_PROCESS,
        )
    )
    box = data.get("dyno", {}).get("threaded")
    if box and "unavailable" not in box:
        held = box["window"]["in_flight"]
        clean = box["box"]["oom_kills"] == 0 and box["box"]["tasks_refused"] == 0 and box["thread_errors"] == 0
        found.append(
            (
                "threads: defaults in a Standard-1X cgroup (512 MB, 256 tasks)",
                f"≥ {TARGET_STANDARD_1X} in flight, no OOM kill, no refused thread",
                f"{held} in flight, peak {box['box']['memory_peak_bytes'] / 2**20:.0f} MB, "
                f"{box['box']['oom_kills']} OOM kills, {box['box']['tasks_refused']} refused",
                held >= TARGET_STANDARD_1X and clean and box["alive"],
            )
        )
    else:
        found.append(
            ("threads: defaults in a Standard-1X cgroup", "measured", (box or {}).get("unavailable", "no"), False)
        )
    kill = new.get("kill")
    if kill:
        within = kill["all_within_s"]
        found += [
            (
                f"threads: SIGKILL of a process holding {kill['held']}: all resumed",
                f"≤ {RESUME_LIMIT:g} s" + ("" if quick else f", ≥ {TARGET_KILLED} held"),
                _num(within, ".0f", " s") if within is not None else f"{kill['resumed']}/{kill['held']} resumed",
                within is not None and within <= RESUME_LIMIT and (quick or kill["held"] >= TARGET_KILLED),
            ),
            (
                "threads: no second Pika submission or Replicate prediction after the kill",
                "0 / 0",
                f"{kill['pika_submissions_after']} / {kill['replicate_creates_after']}",
                kill["pika_submissions_after"] == 0 and kill["replicate_creates_after"] == 0,
            ),
        ]
    cb = new.get("callbacks")
    if cb:
        found.append(
            (
                "threads: exactly one callback per request",
                f"{cb['requests']}, no duplicates",
                f"{cb['called_back']}, {cb['duplicates']} duplicates",
                cb["called_back"] == cb["requests"] and cb["duplicates"] == 0,
            )
        )
    lag = new.get("lag")
    if lag:
        want_median, want_max = p.poll_interval / 2 + 0.3, p.poll_interval + 1
        found.append(
            (
                f"threads: callback lag with {lag['in_flight_during']} in flight (POLL_INTERVAL={p.poll_interval:g})",
                f"median ≤ {want_median:.1f} s, max ≤ {want_max:.1f} s",
                f"{lag['median_s']:.2f} s, {lag['max_s']:.2f} s",
                lag["median_s"] <= want_median and lag["max_s"] <= want_max,
            )
        )
    return found
