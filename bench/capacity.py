"""Part 3, capacity: how many requests one machine holds in flight, what each costs, and recovery.

The workers are started exactly as the Procfile's ``worker`` line starts them (``rq worker-pool``
with ``--num-workers ${WORKER_PROCESSES}``), with WORKER_PROCESSES stepped up (100, then 500) while
memory allows. Every request waits on a fake Pika job that does not finish during the measurement,
with the default INITIAL_WAIT_TIME/POLL_INTERVAL, so it sits in ``waiting`` or ``polling``. For each
step: PSS of all the pool's processes (from ``/proc/<pid>/smaps_rollup``) per request in flight, and
their CPU over a fixed window. At the largest step the whole pool is killed with SIGKILL and a new
pool started: the janitor (``scheduler``) must hand the requests back and the new pool resume every
one of them, with no second Pika submission, within two minutes. Then every video finishes and each
request must call back exactly once.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rq.job import Job, JobStatus

from bench import common
from bench.common import BenchError, Section, table

TARGET_PSS_MB = 30.0
TARGET_CPU_PCT = 5.0
TARGET_IN_FLIGHT = 500
RESUME_LIMIT = 120.0
#: Never let the machine's available memory fall below this.
MEMORY_FLOOR_MB = 3000.0
#: Before the first step, assume this much per worker when checking that a step fits.
FIRST_GUESS_MB = 30  # the target per request; later steps use what the previous one measured
DEFAULT_POLL_INTERVAL = 10.0


class MemoryTight(BenchError):
    """The machine's available memory fell under the floor."""


def stages(redis: Any) -> dict[str, int]:
    """How many records are in each (status, stage), e.g. ``processing/waiting``."""
    keys = list(redis.scan_iter(match="i2v:req:*", count=2000))
    counts: dict[str, int] = {}
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "status", "stage")
        for status, stage in pipe.execute():
            name = f"{(status or b'?').decode()}/{(stage or b'-').decode()}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def waiting_count(redis: Any) -> int:
    """Requests in flight: records of unfinished requests in stage waiting or polling."""
    counts = stages(redis)
    return counts.get("processing/waiting", 0) + counts.get("processing/polling", 0)


def guard_memory() -> None:
    """Raise MemoryTight when the machine is running short."""
    available = common.mem_available_mb()
    if available < MEMORY_FLOOR_MB:
        raise MemoryTight(f"MemAvailable fell to {available:.0f} MB")


def submit_all(client_factory: Any, ids: list[str]) -> None:
    """Submit every id (16 at a time); all must be accepted."""
    local = threading.local()

    def submit(rid: str) -> int:
        if not hasattr(local, "client"):
            local.client = client_factory()
        return local.client.submit(rid).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(submit, ids))
    if any(code != 202 for code in codes):
        raise BenchError(f"submissions answered {sorted(set(codes))}")


def measure_window(pool: common.Service, redis: common.PrivateRedis, seconds: float) -> dict[str, Any]:
    """CPU of the pool's processes over ``seconds``, then their memory, Redis load and in-flight count."""
    stages_at_start = stages(redis.client)
    pids = pool.pids()
    redis.client.config_resetstat()
    cpu_before = {pid: common.cpu_seconds(pid) for pid in pids}
    redis_before = common.cpu_seconds(redis.pid)
    commands_before = redis.client.info("stats")["total_commands_processed"]
    wall = common.watch(seconds, guard_memory)
    cpu_after = {pid: common.cpu_seconds(pid) for pid in pids}
    pool_cpu = sum(max(0.0, cpu_after[pid] - cpu_before[pid]) for pid in pids)
    parent_cpu = cpu_after[pids[0]] - cpu_before[pids[0]]
    redis_cpu = common.cpu_seconds(redis.pid) - redis_before
    commands = redis.client.info("stats")["total_commands_processed"] - commands_before
    per_command = {
        name.removeprefix("cmdstat_"): value["calls"] / wall
        for name, value in redis.client.info("commandstats").items()
    }
    memory = [common.memory_kb(pid) for pid in pids]
    cores = os.cpu_count() or 1
    info_clients = redis.client.info("clients")
    last_commands: dict[str, int] = {}
    for client in redis.client.client_list():
        last_commands[client.get("cmd", "?")] = last_commands.get(client.get("cmd", "?"), 0) + 1
    return {
        "processes": len(pids),
        "window": wall,
        "pool_cpu_s": pool_cpu,
        "pool_cpu_pct_machine": pool_cpu / (wall * cores) * 100,
        "parent_cpu_pct_machine": parent_cpu / (wall * cores) * 100,
        "redis_cpu_pct_machine": redis_cpu / (wall * cores) * 100,
        "redis_commands_per_s": commands / wall,
        "redis_commands": dict(sorted(per_command.items(), key=lambda kv: -kv[1])),
        "stages_at_start": stages_at_start,
        "redis_clients": info_clients.get("connected_clients", 0),
        "redis_clients_by_last_command": dict(sorted(last_commands.items(), key=lambda kv: -kv[1])),
        "pss_mb": sum(m["Pss"] for m in memory) / 1024,
        "parent_pss_mb": memory[0]["Pss"] / 1024,
        "child_pss_mb": statistics.mean(m["Pss"] for m in memory[1:]) / 1024 if len(memory) > 1 else 0.0,
        "child_rss_mb": statistics.mean(m["Rss"] for m in memory[1:]) / 1024 if len(memory) > 1 else 0.0,
        "child_private_mb": statistics.mean(m["Private"] for m in memory[1:]) / 1024 if len(memory) > 1 else 0.0,
        "redis_used_memory_mb": redis.client.info("memory")["used_memory"] / 1024 / 1024,
    }


def run_step(
    n: int,
    env: dict[str, str],
    redis: common.PrivateRedis,
    fakes: tuple,
    client_factory: Any,
    window: float,
    settle: float,
) -> tuple[common.Service, list[dict[str, Any]]]:
    """Start a pool of ``n`` workers and fill it with ``n`` waiting requests; measure it right after (mostly
    ``waiting``) and once every request is ``polling``. The pool is left running."""
    pika = fakes[1]
    redis.client.flushall()
    for fake in fakes:
        fake.reset()
    baseline_clients = redis.client.info("clients")["connected_clients"]
    baseline_memory = redis.client.info("memory")["used_memory"] / 1024 / 1024
    log_dir = common.OUT_DIR / "capacity" / f"pool-{n}"
    pool = common.start_service("worker", {**env, "WORKER_PROCESSES": str(n)}, log_dir)
    started = time.monotonic()

    def registered() -> bool:
        guard_memory()
        if not pool.alive():
            raise BenchError(f"the worker pool exited:\n{pool.tail()}")
        return len(common.workers_registered(redis.client)) >= n

    common.wait_until(registered, 60 + n * 0.5, f"{n} workers to register", interval=0.5)
    pool_up = time.monotonic() - started
    ids = [f"cap-{n}-{i}" for i in range(n)]
    submitted = time.monotonic()
    submit_all(client_factory, ids)

    def all_waiting() -> bool:
        guard_memory()
        return waiting_count(redis.client) >= n

    common.wait_until(all_waiting, 60 + n * 0.4, f"{n} requests to be waiting on Pika", interval=1.0)
    ramp = time.monotonic() - submitted
    time.sleep(settle)  # let the start-up burst (captions, submissions) fade before measuring
    rows = []
    for phase in ("filled", "polling"):
        if phase == "polling":
            # The steady state of a long generation: every request past INITIAL_WAIT_TIME, polling.
            def all_polling() -> bool:
                guard_memory()
                return stages(redis.client).get("processing/polling", 0) >= n

            common.wait_until(all_polling, 150, f"{n} requests to be polling", interval=1.0)
            time.sleep(settle)
        result = measure_window(pool, redis, window)
        result.update(
            phase=phase,
            workers=n,
            in_flight=waiting_count(redis.client),
            stages=stages(redis.client),
            pool_start_s=pool_up,
            ramp_s=ramp,
            pika_generates=len(pika.generates),
            mem_available_after_mb=common.mem_available_mb(),
        )
        result["pss_per_request_mb"] = result["pss_mb"] / max(result["in_flight"], 1)
        result["pool_redis_clients"] = result["redis_clients"] - baseline_clients
        result["request_redis_memory_mb"] = result["redis_used_memory_mb"] - baseline_memory
        rows.append(result)
    return pool, rows


def crash_and_resume(
    pool: common.Service,
    n: int,
    env: dict[str, str],
    redis: common.PrivateRedis,
    fakes: tuple,
    limit: float,
) -> dict[str, Any]:
    """SIGKILL every process of the pool, start a new one, and time the resumption of every request."""
    _replicate, pika, game = fakes
    keys = [k.decode() for k in redis.client.scan_iter(match="i2v:req:*", count=2000)]
    job_ids = ["i2v-" + key.rsplit(":", 1)[-1] for key in keys]
    old_workers = common.workers_registered(redis.client)
    generates_before = len(pika.generates)
    killed_processes = len(pool.pids())
    killed_at = time.monotonic()
    pool.kill()
    replacement = common.start_service(
        "worker", {**env, "WORKER_PROCESSES": str(n)}, common.OUT_DIR / "capacity" / "pool-restarted"
    )
    first_seen: dict[str, float] = {}
    deadline = killed_at + limit + 60  # measure past the target too, to size a miss
    while time.monotonic() < deadline and len(first_seen) < len(job_ids):
        guard_memory()
        now = time.monotonic() - killed_at
        for job_id, job in zip(job_ids, Job.fetch_many(job_ids, connection=redis.client), strict=True):
            if job_id in first_seen or job is None:
                continue
            if job.get_status(refresh=False) == JobStatus.STARTED and job.worker_name not in old_workers:
                first_seen[job_id] = now
        time.sleep(1.0)
    resumed_times = sorted(first_seen.values())
    generates_after = len(pika.generates)
    # Every video finishes now; each request must call back exactly once.
    for job_id in list(pika.jobs):
        pika.finish_now(job_id)
    callbacks_wanted = len(job_ids)
    with contextlib.suppress(BenchError):
        common.wait_until(
            lambda: len(game.callbacks) >= callbacks_wanted, 90, f"{callbacks_wanted} callbacks", interval=0.5
        )
    time.sleep(2)  # a duplicate would show up now
    per_request: dict[str, int] = {}
    completed = 0
    for cb in game.callbacks:
        per_request[cb.request_id] = per_request.get(cb.request_id, 0) + 1
        completed += cb.status == "COMPLETED"
    replacement.kill()
    return {
        "requests": len(job_ids),
        "killed_processes": killed_processes,
        "resumed": len(first_seen),
        "first_resumed_s": resumed_times[0] if resumed_times else None,
        "median_resumed_s": statistics.median(resumed_times) if resumed_times else None,
        "all_resumed_s": resumed_times[-1] if len(first_seen) == len(job_ids) else None,
        "last_resumed_s": resumed_times[-1] if resumed_times else None,
        "generates_before": generates_before,
        "generates_after": generates_after,
        "callbacks": sum(per_request.values()),
        "requests_called_back": len(per_request),
        "duplicates": sum(c - 1 for c in per_request.values() if c > 1),
        "completed": completed,
    }


def run(quick: bool, workers: tuple[int, ...] | None = None) -> Section:
    """Step the pool up (``workers``: the steps), measure, crash it, and return the section of RESULTS.md."""
    # Two steps: part 5 runs the same pool again beside the threaded one, and the whole bench
    # should stay within about 20 minutes.
    steps = workers or ((20,) if quick else (100, 500))
    window, settle = (3.0, 1.0) if quick else (20.0, 3.0)
    # Defaults-like timings: requests sit in `waiting` (INITIAL_WAIT_TIME) then `polling`.
    timings = (
        {"INITIAL_WAIT_TIME": "5", "POLL_INTERVAL": "2", "JANITOR_INTERVAL": "1", "WORKER_HEARTBEAT_INTERVAL": "2"}
        if quick
        else {}
    )
    out = common.OUT_DIR / "capacity"
    out.mkdir(parents=True, exist_ok=True)
    redis = common.private_redis(out / "redis")
    api_key = secrets.token_urlsafe(24)
    measured: list[dict[str, Any]] = []
    stopped_because = ""
    crash: dict[str, Any] | None = None
    pool: common.Service | None = None
    try:
        with common.provider_fakes(pika_duration=3600) as fakes:
            env = common.service_env(redis.url, fakes, api_key, out, **timings)
            web = common.start_service("web", env, out)
            common.start_service("scheduler", env, out)
            base = common.local_url(int(env["PORT"]))
            common.wait_http(base + "/healthz", 30, web)
            per_worker = FIRST_GUESS_MB
            for n in steps:
                if pool is not None:
                    pool.kill()
                    pool = None
                    time.sleep(2)  # let the kernel take the memory back before judging what is free
                need = n * per_worker * 1.2
                available = common.mem_available_mb()
                if available - need < MEMORY_FLOOR_MB:
                    stopped_because = (
                        f"stopped before {n} workers: they would need about {need:.0f} MB, {available:.0f} MB available"
                    )
                    break
                try:
                    pool, rows = run_step(n, env, redis, fakes, lambda: common.Client(base, api_key), window, settle)
                except MemoryTight as exc:
                    stopped_because = f"stopped during {n} workers: {exc}"
                    break
                measured += rows
                per_worker = max(r["pss_mb"] for r in rows) / n
                for r in rows:
                    print(
                        f"bench: capacity {n} workers ({r['phase']}): {r['in_flight']} in flight, "
                        f"{r['pss_per_request_mb']:.1f} MB PSS each, CPU {r['pool_cpu_pct_machine']:.1f} %",
                        flush=True,
                    )
            if pool is not None and measured:
                crash = crash_and_resume(pool, measured[-1]["workers"], env, redis, fakes, RESUME_LIMIT)
                pool = None
    finally:
        if pool is not None:
            pool.kill()
        common.stop_everything()
        redis.stop()
    if not measured:
        raise BenchError(stopped_because or "no capacity step could be measured")
    return report(measured, crash, stopped_because, quick, timings)


def report(
    measured: list[dict[str, Any]],
    crash: dict[str, Any] | None,
    stopped_because: str,
    quick: bool,
    timings: dict[str, str],
) -> Section:
    """Markdown and verdicts of the capacity part (the sizing table, part 4, is built from its data)."""
    worker_line = common.procfile_command("worker")
    largest = max(m["workers"] for m in measured)
    best = max((m for m in measured if m["workers"] == largest), key=lambda m: m["pss_per_request_mb"])
    rows = [
        [
            m["workers"],
            phase_text(m),
            m["in_flight"],
            f"{m['pss_mb']:.0f}",
            f"**{m['pss_per_request_mb']:.1f}**",
            f"{m['parent_pss_mb']:.0f}",
            f"{m['child_pss_mb']:.1f} / {m['child_private_mb']:.1f} / {m['child_rss_mb']:.1f}",
            f"**{m['pool_cpu_pct_machine']:.2f}** ({m['parent_cpu_pct_machine']:.2f})",
            f"{m['pool_cpu_s'] / m['window'] / max(m['in_flight'], 1) * 1e6:.0f}",
            f"{m['redis_cpu_pct_machine']:.2f}",
            f"{m['redis_commands_per_s']:.0f}",
            m["pool_redis_clients"],
            f"{m['pool_start_s']:.0f} / {m['ramp_s']:.0f}",
            f"{m['mem_available_after_mb'] / 1024:.1f}",
        ]
        for m in measured
    ]
    timing_text = ", ".join(f"{k}={v}" for k, v in timings.items()) or "INITIAL_WAIT_TIME, POLL_INTERVAL, " + (
        "MAX_CHECK_TIME, WORKER_HEARTBEAT_INTERVAL and JANITOR_INTERVAL at their defaults (60, 10, 420, 30, 15 s)"
    )
    steps_text = ", ".join(dict.fromkeys(str(m["workers"]) for m in measured))
    lines = [
        "**How the workers are started.** Exactly as the Procfile's `worker` line:",
        "",
        "```",
        f"worker: {worker_line}",
        "```",
        "",
        f"with `WORKER_PROCESSES` = {steps_text} in turn (one pool per step; a pool is one parent that forks "
        "that many `PipelineWorker`s, each running one request at a time in its own process with a heartbeat "
        "thread). `web` and `scheduler` (the janitor) run beside it, all on one private Redis.",
        "",
        f"**Method.** For each step: a fresh pool, then as many requests as workers, each waiting on a fake "
        f"Pika job that does not finish within the hour; {timing_text}. Two windows of "
        f"{best['window']:.0f} s each: `filled`, a few seconds after every request is in stage `waiting` or "
        "`polling` (most are still in the initial wait), and `polling`, once every request is past "
        "INITIAL_WAIT_TIME and polls Pika every POLL_INTERVAL (the steady state of a long generation). In "
        "each: CPU of all the pool's processes over the window, then PSS (sum of `Pss` in "
        "`/proc/<pid>/smaps_rollup` over the parent and every worker).",
        "",
        table(
            [
                "workers",
                "window (stages at its start)",
                "in flight",
                "PSS total MB",
                "PSS MB / request",
                "parent PSS MB",
                "per worker: PSS / private / RSS MB",
                "pool CPU % of machine (parent)",
                "CPU µs/s per request",
                "Redis CPU %",
                "Redis cmds/s",
                "pool's Redis connections",
                "pool start / ramp s",
                "GB available after",
            ],
            rows,
        ),
        "",
        "`in flight` counts records of unfinished requests in stage `waiting` or `polling`. CPU % is of the "
        "whole machine (2 cores = 100 %). `private` is the memory only that worker holds; the rest of its RSS "
        "is shared with the pool's parent (fork) and counted in PSS pro rata.",
    ]
    if stopped_because:
        lines += ["", f"Stepping stopped early: {stopped_because}."]
    if crash:
        lines += [
            "",
            f"**Crash and resume** ({crash['requests']} requests in flight). All {crash['killed_processes']} "
            "processes of the pool got SIGKILL at once; a new pool with the same command started right away. "
            "A request counts as resumed once its RQ job is `started` again on a worker of the new pool (the "
            "janitor hands abandoned executions back to RQ once their heartbeat lapses; RQ retries them, and "
            "the job resumes from its record: same Pika job, no new submission). Then every Pika job was "
            "finished and each request had to call back exactly once.",
            "",
            table(
                ["", "value"],
                [
                    ["resumed", f"{crash['resumed']} of {crash['requests']}"],
                    [
                        "first / median / last resumed after the kill",
                        " / ".join(
                            "-" if crash[k] is None else f"{crash[k]:.0f} s"
                            for k in ("first_resumed_s", "median_resumed_s", "last_resumed_s")
                        ),
                    ],
                    ["all resumed within", f"{crash['all_resumed_s']:.0f} s" if crash["all_resumed_s"] else "no"],
                    ["Pika submissions before / after", f"{crash['generates_before']} / {crash['generates_after']}"],
                    [
                        "callbacks: requests called back / total / duplicates / COMPLETED",
                        f"{crash['requests_called_back']} / {crash['callbacks']} / {crash['duplicates']} / "
                        f"{crash['completed']}",
                    ],
                ],
            ),
        ]
    poll_interval = float(timings.get("POLL_INTERVAL", DEFAULT_POLL_INTERVAL))
    lines += ["", *cpu_note(measured, poll_interval), "", *scaling_note(best)]
    section = Section("3. Capacity", "\n".join(lines))
    most = max(m["in_flight"] for m in measured)
    worst_cpu_row = max(measured, key=lambda m: m["pool_cpu_pct_machine"])
    worst_pss = max(m["pss_per_request_mb"] for m in measured)
    worst_cpu = max(m["pool_cpu_pct_machine"] for m in measured)
    section.targets = [
        (
            "capacity: requests in flight on one machine",
            f"≥ {TARGET_IN_FLIGHT}" + (" (a quick run tries 20)" if quick else ""),
            str(most),
            most >= TARGET_IN_FLIGHT,
        ),
        ("capacity: PSS per request in flight", f"≤ {TARGET_PSS_MB:g} MB", f"{worst_pss:.1f} MB", worst_pss <= 30),
        (
            "capacity: pool CPU while waiting (worst window)",
            f"< {TARGET_CPU_PCT:g} %",
            f"{worst_cpu:.2f} % ({worst_cpu_row['workers']} workers, {worst_cpu_row['phase']})",
            worst_cpu < TARGET_CPU_PCT,
        ),
    ]
    if crash:
        resumed_in = crash["all_resumed_s"]
        section.targets += [
            (
                f"capacity: all {crash['requests']} resumed after SIGKILL of the pool",
                f"≤ {RESUME_LIMIT:g} s",
                f"{resumed_in:.0f} s" if resumed_in else f"{crash['resumed']}/{crash['requests']} resumed",
                bool(resumed_in and resumed_in <= RESUME_LIMIT),
            ),
            (
                "capacity: no second Pika submission after the crash",
                "0",
                str(crash["generates_after"] - crash["generates_before"]),
                crash["generates_after"] == crash["generates_before"],
            ),
            (
                "capacity: one callback per request after the crash",
                f"{crash['requests']}, no duplicates",
                f"{crash['requests_called_back']}, {crash['duplicates']} duplicates",
                crash["requests_called_back"] == crash["requests"] and crash["duplicates"] == 0,
            ),
        ]
    section.data = {"steps": measured, "crash": crash}
    return section


def phase_text(m: dict[str, Any]) -> str:
    """A window's name and the stage mix at its start."""
    mix = ", ".join(
        f"{count} {name.split('/')[-1]}" for name, count in sorted(m["stages_at_start"].items(), key=lambda kv: -kv[1])
    )
    return f"{m['phase']} ({mix})"


def cpu_note(measured: list[dict[str, Any]], poll_interval: float) -> list[str]:
    """What a request in flight costs in CPU while it waits and while it polls, at the largest step."""
    cores = os.cpu_count() or 1
    largest = max(m["workers"] for m in measured)
    rows = {m["phase"]: m for m in measured if m["workers"] == largest}
    if "polling" not in rows or "filled" not in rows:
        return []

    def per_request(m: dict[str, Any]) -> float:
        return m["pool_cpu_s"] / m["window"] / max(m["in_flight"], 1) * 1e6

    polling, waiting = per_request(rows["polling"]), per_request(rows["filled"])
    per_poll_ms = (polling - waiting) * poll_interval / 1000
    n = max(rows["filled"]["in_flight"], 1)
    commands = rows["filled"].get("redis_commands", {})
    wakeups = (commands.get("hget", 0.0) + commands.get("exec", 0.0)) / n
    budget = TARGET_CPU_PCT / 100 * cores / TARGET_IN_FLIGHT * 1e6
    lines = [
        f"**CPU per request in flight** ({largest} in flight): {waiting:.0f} µs of CPU per second per request in "
        f"the `filled` window (mostly the initial wait) and {polling:.0f} µs once all are polling, i.e. "
        f"{rows['filled']['pool_cpu_pct_machine']:.1f} % and {rows['polling']['pool_cpu_pct_machine']:.1f} % of "
        f"the machine. Under {TARGET_CPU_PCT:g} % with {TARGET_IN_FLIGHT} in flight leaves {budget:.0f} µs per "
        "second per request. Where it goes: each request is a Python process of its own that wakes for its "
        f"cancel check and its heartbeat thread, about {wakeups:.2f} times a second (Redis `hget` plus `exec` "
        "per request in that window), which costs about "
        f"{waiting / max(wakeups, 1e-9):.0f} µs of CPU per wake-up across "
        f"{largest} processes on 2 cores; a Pika poll (HTTP GET, JSON, progress written to the record) adds "
        f"about {per_poll_ms:.1f} ms every POLL_INTERVAL ({poll_interval:g} s).",
    ]
    if rows["polling"]["pool_cpu_pct_machine"] >= TARGET_CPU_PCT:
        lines[-1] += (
            " What would close the gap: fewer wake-ups per request (the cancel check riding on the heartbeat, a "
            "longer sleep slice), a cheaper poll, or holding many waits in one process (threads or asyncio "
            "instead of a process per request, which would also cut the memory per request)."
        )
    return lines


def scaling_note(best: dict[str, Any]) -> list[str]:
    """How the measured per-request costs add up when several machines share one Redis."""
    n = best["in_flight"] or 1
    ops_per_request = best["redis_commands_per_s"] / n
    clients_per_worker = best["pool_redis_clients"] / best["workers"]
    redis_mb_per_request = best["request_redis_memory_mb"] / n
    machines_by_clients = math.floor(10000 / (clients_per_worker * best["workers"]))
    top_commands = ", ".join(
        f"{cmd} {rate / n:.2f}" for cmd, rate in list(best.get("redis_commands", {}).items())[:6] if rate > 0
    )
    by_command = ", ".join(f"{cmd} {count}" for cmd, count in best["redis_clients_by_last_command"].items())
    return [
        "**Scaling across machines sharing one Redis.** Run the same `worker` line on every machine with "
        "`REDIS_URL` pointing at the shared Redis and `WORKER_PROCESSES` sized to the machine's memory (the "
        "table above: about "
        f"{best['pss_per_request_mb']:.0f} MB per worker); run `web` wherever convenient and exactly one "
        "`scheduler` for the whole deployment. Workers coordinate only through Redis, so machines add "
        "capacity linearly until Redis is the limit. Measured per request in flight: "
        f"{ops_per_request:.2f} Redis commands/s ({top_commands}), "
        f"{clients_per_worker:.1f} Redis connections per worker (all of Redis's connections by last command: "
        f"{by_command}), and {redis_mb_per_request * 1024:.0f} kB of Redis memory. "
        f"So 10 machines x {best['workers']} workers add about "
        f"{10 * best['workers'] * ops_per_request:.0f} commands/s (a small fraction of what one Redis serves) "
        f"but {10 * best['workers'] * clients_per_worker:.0f} connections: Redis's default `maxclients` of "
        f"10000 allows about {machines_by_clients} such machines, and a managed Redis plan's connection "
        "limit is usually the first ceiling.",
    ]
