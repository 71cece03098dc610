"""Part 4, sizing: requests per hour x generation time -> dynos or machines, processes, threads, memory, Redis.

Little's law: requests in flight L = arrival rate x time each request is in flight. A request is in
flight for the caption, the Pika submission and the wait until the poll that finds the video
(``lag.time_to_callback`` with the default schedule). What one request in flight costs comes from
the measurements of this run: part 5 (the threaded pool: PSS of a worker process's base, PSS per
request, Redis connections per process, threads per process besides the jobs' own) and part 3 (the
one-request-per-process pool, for comparison). The ceilings are the platform's: memory, Heroku's
limit on processes + threads per dyno, the Redis plan's connection limit, and Replicate's 600
prediction creates a minute.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from bench.common import Section, table
from bench.lag import DEFAULT_SCHEDULE, time_to_callback

#: What a CLIP Interrogator caption usually takes in ``best`` mode (as the service's ETA assumes).
CAPTION_SECONDS = 20.0
SUBMIT_SECONDS = 1.0
#: Headroom over the mean number in flight, for bursts.
HEADROOM = 1.25
#: Share of a dyno's memory the requests may fill; the rest absorbs peaks (ramps, heavy steps).
MEMORY_SHARE = 0.8
#: Share of a dyno's process + thread limit the pool may use.
TASK_SHARE = 0.9
#: Share of the cores the waiting requests may keep busy.
CPU_SHARE = 0.5
#: The largest WORKER_THREADS the settings accept.
MAX_THREADS = 1000
#: Replicate: 600 prediction creates a minute; one create (the caption) per request.
REPLICATE_CREATES_PER_HOUR = 600 * 60
RATES = (100, 1_000, 6_000, 18_000, 36_000, 60_000)
GENERATIONS = (60.0, 180.0, 300.0)
#: Redis connections kept for the web dynos and the scheduler, besides the workers.
OTHER_CONNECTIONS = 10


@dataclass(frozen=True)
class Platform:
    """Where a worker line runs: memory, the limit on processes + threads, cores for the GIL."""

    name: str
    memory_mb: float
    tasks: int
    cores: int


#: Heroku's dyno types (memory; processes + threads per dyno, from Heroku's "Dyno Scaling and
#: Process Limits"; cores: standard dynos share theirs, counted as one).
DYNOS = (
    Platform("Standard-1X", 512, 256, 1),
    Platform("Standard-2X", 1024, 512, 1),
    Platform("Performance-M", 2560, 16384, 2),
    Platform("Performance-L", 14336, 32768, 8),
)
#: Heroku Key-Value Store plans and their connection limits (Heroku's technical characterization).
REDIS_PLANS = (
    ("mini", 20),
    ("premium-0", 40),
    ("premium-1", 80),
    ("premium-2", 200),
    ("premium-3", 400),
    ("premium-4", 700),
    ("premium-5", 1_000),
    ("premium-7", 10_000),
    ("premium-9", 25_000),
    ("premium-10", 40_000),
    ("premium-12", 65_000),
)


def this_machine() -> Platform:
    """The machine the bench runs on, keeping 4 GB for the OS, web and janitor."""
    with open("/proc/meminfo") as fh:
        total_mb = int(fh.readline().split()[1]) / 1024
    try:
        with open("/proc/sys/kernel/threads-max") as fh:
            tasks = int(fh.read())
    except OSError:
        tasks = 32768
    return Platform(f"this machine ({total_mb / 1024:.0f} GB)", total_mb - 4096, tasks, os.cpu_count() or 1)


def hold_seconds(generation: float) -> float:
    """Seconds a request is in flight for a video that takes ``generation`` s at Pika."""
    return CAPTION_SECONDS + SUBMIT_SECONDS + time_to_callback(generation, *DEFAULT_SCHEDULE)


def in_flight_needed(per_hour: float, generation: float) -> int:
    """Requests in flight for ``per_hour`` requests of that generation time, with headroom."""
    return math.ceil(per_hour / 3600 * hold_seconds(generation) * HEADROOM)


def workers_needed(per_hour: float, generation: float) -> int:
    """Single-request workers for ``per_hour`` requests (one per request in flight)."""
    return in_flight_needed(per_hour, generation)


@dataclass(frozen=True)
class Costs:
    """What the measurements say one process and one request in flight cost."""

    base_mb: float  # PSS of a worker process with no request
    request_kb: float  # PSS added per request in flight
    connections: float  # Redis connections per worker process
    extra_threads: float  # threads per process besides one per request (work loop, heartbeats, ...)
    cpu_us: float  # CPU µs per request-second while polling
    measured_with: str
    default_processes: int
    default_threads: int


def threaded_costs(threads_data: dict[str, Any]) -> Costs | None:
    """Costs from part 5's threaded pool (None when it was not measured)."""
    new = threads_data.get("threaded")
    if not new or threads_data.get("default_threads") is None or "mixed" not in new:
        return None
    idle, mixed = new["idle"], new["mixed"]
    workers = max(new["shape"]["processes"], 1)
    in_flight = max(mixed["in_flight"], 1)
    return Costs(
        base_mb=idle["pss_kb"] / workers / 1024,
        request_kb=max(mixed["pss_kb"] - idle["pss_kb"], 0) / in_flight,
        connections=sum(mixed["redis_per_process"]) / workers,
        extra_threads=max(mixed["threads"] - in_flight, 0) / workers,
        cpu_us=max(new["polling"]["cpu_us_per_request_s"], 1e-3),
        measured_with=f"{new['shape']['processes']} x {new['shape']['threads']}, {mixed['in_flight']} in flight",
        default_processes=int(threads_data.get("default_processes") or 1),
        default_threads=int(threads_data["default_threads"]),
    )


@dataclass(frozen=True)
class Fit:
    """A platform's worker settings and what they hold."""

    processes: int
    threads: int
    held: int
    bound: str
    memory_mb: float
    connections: int


def _bounds(platform: Platform, costs: Costs, processes: int) -> dict[str, float]:
    """Requests a platform holds with ``processes`` worker processes, by each of its limits."""
    return {
        "memory": (platform.memory_mb * MEMORY_SHARE - processes * costs.base_mb) * 1024 / costs.request_kb,
        # One thread per request plus each process's own threads, plus the pool's parent.
        "processes + threads": platform.tasks * TASK_SHARE - processes * costs.extra_threads - 1,
        "CPU": platform.cores * CPU_SHARE * 1e6 / costs.cpu_us,
    }


def fit(platform: Platform, costs: Costs) -> Fit:
    """Settings for one dyno or machine: the most requests memory, tasks and CPU allow."""
    # One process per core (the GIL); a shared-CPU dyno keeps the default number of processes.
    processes = max(costs.default_processes if platform.cores == 1 else platform.cores, 1)
    bounds = _bounds(platform, costs, processes)
    most = min(bounds.values())
    if most / processes > MAX_THREADS:
        # WORKER_THREADS stops at its maximum: more processes instead, each with its own base.
        processes = math.ceil(most / MAX_THREADS)
        bounds = _bounds(platform, costs, processes)
    bound = min(bounds, key=lambda k: bounds[k])
    threads = min(max(math.floor(bounds[bound] / processes), 0), MAX_THREADS)
    held = processes * threads
    return Fit(
        processes=processes,
        threads=threads,
        held=held,
        bound=bound,
        memory_mb=processes * costs.base_mb + held * costs.request_kb / 1024,
        connections=math.ceil(processes * costs.connections),
    )


def plan_for(connections: int) -> str:
    """The smallest Heroku Key-Value Store plan whose connection limit takes ``connections``."""
    for name, limit in REDIS_PLANS:
        if connections <= limit:
            return name
    return "over every plan"


def section(capacity: dict[str, Any] | None, threads_data: dict[str, Any] | None, quick: bool) -> Section | None:
    """The sizing section from what this run measured (None when neither pool was measured)."""
    costs = threaded_costs(threads_data or {})
    old = _old_pool(capacity)
    if costs is None and old is None:
        return None
    holds = ", ".join(f"{hold_seconds(g):.0f} s for g = {g:g} s" for g in GENERATIONS)
    lines = [
        "Requests in flight = requests per second x seconds each is in flight (Little's law) x "
        f"{HEADROOM:g} headroom for bursts. A request is in flight for the caption (about "
        f"{CAPTION_SECONDS:g} s in CLIP `best` mode), the Pika submission (about {SUBMIT_SECONDS:g} s) and the "
        "wait until the poll that finds the video, T(g) with the default schedule (INITIAL_WAIT_TIME = 60 s, "
        f"POLL_INTERVAL = 10 s, part 2): {holds}."
        + (" (Quick run: the costs below come from small pools.)" if quick else ""),
        "",
    ]
    platforms = [*DYNOS, this_machine()]
    fits: dict[str, Fit] = {}
    if costs is not None:
        fits = {p.name: fit(p, costs) for p in platforms}
        lines += [
            "**What one dyno or machine holds** with the threaded worker, from part 5's threaded pool "
            f"({costs.measured_with}): {costs.base_mb:.0f} MB PSS per worker process before any request, "
            f"{costs.request_kb:.0f} KB per request in flight, {costs.connections:.1f} Redis connections per "
            f"worker process, {costs.extra_threads:.0f} threads per process besides one per request, "
            f"{costs.cpu_us:.0f} µs of CPU per request-second while polling. Requests may fill "
            f"{MEMORY_SHARE:.0%} of the memory, {TASK_SHARE:.0%} of the platform's limit on processes + threads "
            f"and {CPU_SHARE:.0%} of the cores; one process per core (the GIL), and the default "
            f"`WORKER_PROCESSES` ({costs.default_processes}) on dynos with a share of a core.",
            "",
            table(
                [
                    "platform",
                    "memory",
                    "processes + threads limit",
                    "WORKER_PROCESSES x WORKER_THREADS",
                    "requests held",
                    "bound by",
                    "memory used (est.)",
                    "Redis connections",
                ]
                + (["one request per process: requests held"] if old else []),
                [
                    [
                        p.name,
                        f"{p.memory_mb / 1024:.1f} GB",
                        f"{p.tasks:,}",
                        f"{fits[p.name].processes} x {fits[p.name].threads}",
                        f"**{fits[p.name].held:,}**",
                        fits[p.name].bound,
                        f"{fits[p.name].memory_mb:,.0f} MB",
                        f"{fits[p.name].connections:,}",
                    ]
                    + ([f"{_old_held(p, old):,}"] if old else [])
                    for p in platforms
                ],
            ),
            "",
        ]
    rows = []
    for rate in RATES:
        for g in GENERATIONS:
            need = in_flight_needed(rate, g)
            row: list[object] = [f"{rate:,}" + (" ⚠" if rate > REPLICATE_CREATES_PER_HOUR else ""), f"{g:g} s"]
            row.append(f"{need:,}")
            for p in platforms if costs is not None else []:
                f = fits[p.name]
                if f.held <= 0:
                    row.append("-")
                    continue
                count = math.ceil(need / f.held)
                # Each dyno runs only the processes its share needs (a light load needs few).
                processes = min(f.processes, math.ceil(math.ceil(need / count) / max(f.threads, 1)))
                connections = count * math.ceil(processes * costs.connections) + OTHER_CONNECTIONS
                row.append(f"{count:,} ({connections:,} conn., {plan_for(connections)})")
            if old:
                row.append(
                    f"{need:,} processes, {need * old['pss_mb'] / 1024:,.1f} GB, {need * old['connections']:,.0f} conn."
                )
            rows.append(row)
    header = ["requests / hour", "generation", "in flight"]
    header += [f"{p.name}s" if p in DYNOS else "machines like this one" for p in (platforms if costs else [])]
    if old:
        header.append("one request per process (part 3)")
    lines += [
        "**Requests per hour x generation time → dynos or machines** (each at the settings above, with only "
        "as many worker processes as its share of the load needs), with the "
        f"Redis connections of all their worker processes plus {OTHER_CONNECTIONS} for web and scheduler, and "
        "the smallest Heroku Key-Value Store plan that takes them (connection limits: "
        + ", ".join(f"{name} {limit:,}" for name, limit in REDIS_PLANS)
        + ").",
        "",
        table(header, rows),
        "",
        f"⚠ Over the ceiling: Replicate allows 600 prediction creates a minute ({REPLICATE_CREATES_PER_HOUR:,} "
        "an hour) and every request makes one (the caption; with `VIDEO_BACKEND=replicate` two), so one "
        "Replicate account caps the service at about 36,000 requests an hour (18,000 with Replicate video) "
        "whatever the number of workers. Pika's own limit is not published for this API; "
        "`PIKA_MAX_CONCURRENCY` caps generations in flight at Pika across all workers if the account needs "
        "it. Requests beyond what the workers hold wait in the queue (up to `MAX_QUEUED`), they are not lost.",
    ]
    if old:
        lines += [
            "",
            f"The last column is the one-request-per-process pool of part 3: {old['pss_mb']:.1f} MB PSS and "
            f"{old['connections']:.1f} Redis connections per request in flight (measured with {old['workers']} "
            "workers).",
        ]
    return Section("4. Sizing", "\n".join(lines))


def _old_pool(capacity: dict[str, Any] | None) -> dict[str, Any] | None:
    """Part 3's per-request costs of the single-request pool at its largest step."""
    steps = (capacity or {}).get("steps") or []
    if not steps:
        return None
    largest = max(s["workers"] for s in steps)
    best = max((s for s in steps if s["workers"] == largest), key=lambda s: s["pss_per_request_mb"])
    return {
        "pss_mb": best["pss_per_request_mb"],
        "connections": best["pool_redis_clients"] / max(best["workers"], 1),
        "workers": largest,
    }


def _old_held(platform: Platform, old: dict[str, Any]) -> int:
    """Single-request processes a platform holds (memory; each process runs a few threads)."""
    by_memory = platform.memory_mb * MEMORY_SHARE / old["pss_mb"]
    by_tasks = platform.tasks * TASK_SHARE / 3
    return max(math.floor(min(by_memory, by_tasks)), 0)
