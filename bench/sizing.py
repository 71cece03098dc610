"""Part 4, sizing: requests per hour x generation time -> workers and memory, from measured costs.

Little's law: requests in flight L = arrival rate x time each request holds a worker. A request holds
its worker for the caption, the Pika submission and the wait until the poll that finds the video
(``lag.time_to_callback`` with the default schedule). Each worker holds one request and costs the PSS
measured by the capacity part.
"""

from __future__ import annotations

import math
from typing import Any

from bench.common import table
from bench.lag import DEFAULT_SCHEDULE, time_to_callback

#: What a CLIP Interrogator caption usually takes in ``best`` mode (as the service's ETA assumes).
CAPTION_SECONDS = 20.0
SUBMIT_SECONDS = 1.0
#: Headroom over the mean number in flight, for bursts.
HEADROOM = 1.25
#: Replicate: 600 prediction creates a minute; one create (the caption) per request.
REPLICATE_CREATES_PER_HOUR = 600 * 60
RATES = (100, 1_000, 6_000, 18_000, 36_000, 60_000)
GENERATIONS = (60.0, 90.0, 180.0, 300.0)
MACHINE_GB = 24.0
#: Memory a machine keeps for the OS, web, janitor and slack.
MACHINE_RESERVE_GB = 4.0


def hold_seconds(generation: float) -> float:
    """Seconds a request holds a worker for a video that takes ``generation`` s at Pika."""
    return CAPTION_SECONDS + SUBMIT_SECONDS + time_to_callback(generation, *DEFAULT_SCHEDULE)


def workers_needed(per_hour: float, generation: float) -> int:
    """Workers for ``per_hour`` requests of that generation time, with headroom."""
    return math.ceil(per_hour / 3600 * hold_seconds(generation) * HEADROOM)


def section(best: dict[str, Any], quick: bool) -> str:
    """The sizing table, from the largest measured capacity step."""
    pss_mb = best["pss_per_request_mb"]
    per_machine = min(
        max(best["in_flight"], 1),
        math.floor((MACHINE_GB - MACHINE_RESERVE_GB) * 1024 / pss_mb),
    )
    rows = []
    for rate in RATES:
        row: list[object] = [f"{rate:,}" + (" ⚠" if rate > REPLICATE_CREATES_PER_HOUR else "")]
        for g in GENERATIONS:
            workers = workers_needed(rate, g)
            gb = workers * pss_mb / 1024
            machines = math.ceil(workers / per_machine)
            row.append(f"{workers:,} workers, {gb:,.1f} GB, {machines} machine{'s' if machines > 1 else ''}")
        rows.append(row)
    holds = ", ".join(f"{hold_seconds(g):.0f} s for g = {g:g} s" for g in GENERATIONS)
    lines = [
        "## 4. Sizing",
        "",
        "Workers needed = requests per second x seconds a request holds a worker (Little's law) x "
        f"{HEADROOM:g} headroom for bursts. A request holds its worker for the caption (about "
        f"{CAPTION_SECONDS:g} s in CLIP `best` mode), the Pika submission (about {SUBMIT_SECONDS:g} s) and the "
        "wait until the poll that finds the video, T(g) with the default schedule (INITIAL_WAIT_TIME = 60 s, "
        f"POLL_INTERVAL = 10 s, part 2): {holds}. Memory = workers x {pss_mb:.1f} MB PSS per request in "
        f"flight (measured in part 3 with {best['workers']} workers{', quick run' if quick else ''}). A "
        f"{MACHINE_GB:g} GB machine like this one holds {per_machine} workers (the measured step, or what "
        f"fits in {MACHINE_GB - MACHINE_RESERVE_GB:g} GB, whichever is less).",
        "",
        table(["requests / hour", *(f"generation {g:g} s" for g in GENERATIONS)], rows),
        "",
        f"⚠ Over the ceiling: Replicate allows 600 prediction creates a minute ({REPLICATE_CREATES_PER_HOUR:,} "
        "an hour) and every request makes one (the caption; more only when a create is retried), so one "
        "Replicate account caps the service at about 36,000 requests an hour whatever the number of workers. "
        "Pika's own limit is not published for this API; `PIKA_MAX_CONCURRENCY` caps generations in flight "
        "at Pika across all workers if the account needs it. Requests beyond what the workers hold wait in "
        "the queue (up to `MAX_QUEUED`), they are not lost.",
    ]
    return "\n".join(lines)
