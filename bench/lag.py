"""Part 2, callback lag: from the moment the provider's video is ready to the callback at GAME.

The Procfile's ``web``, ``worker`` (WORKER_PROCESSES=8) and ``scheduler`` run against fake
Replicate, Pika and GAME. Each Pika job gets its own plan (the fake's FIFO ``queue_plan``): it
finishes at a random time after its submission, so the moment it becomes ``finished`` is known
exactly (its creation time plus its planned duration). The lag of a request is the time its
callback reached the fake GAME minus that moment.

The second half computes time to callback for the default schedule and the original one (a
300 s sleep, then 10 s polls) from the schedule itself, and checks the formula with a run whose
timings are all divided by 20.
"""

from __future__ import annotations

import math
import random
import secrets
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import common
from bench.common import BenchError, Section, table

POLL_INTERVAL = 2.0
INITIAL_WAIT_TIME = 0.5
WORKERS = 8
#: Default schedule (INITIAL_WAIT_TIME, POLL_INTERVAL) and the original service's.
DEFAULT_SCHEDULE = (60.0, 10.0)
ORIGINAL_SCHEDULE = (300.0, 10.0)
GENERATIONS = (60.0, 90.0, 180.0, 300.0)
SCALE = 20.0


def time_to_callback(generation: float, initial_wait: float, poll_interval: float) -> float:
    """When the poll that finds a video ready at ``generation`` s after the submission happens.

    Polls run at ``W``, ``W + P``, ``W + 2P``, ... after the submission, so the video is seen at
    ``W + P * ceil(max(0, g - W) / P)`` (plus the poll's and the callback's own few milliseconds).
    """
    return initial_wait + poll_interval * math.ceil(max(0.0, generation - initial_wait) / poll_interval)


def polls_made(generation: float, initial_wait: float, poll_interval: float) -> int:
    """Polls up to and including the one that finds the video."""
    return 1 + math.ceil(max(0.0, generation - initial_wait) / poll_interval)


def pika_jobs_in_order(pika: Any) -> list[tuple[str, float]]:
    """(job id, submission time) of every Pika job, in the order the fake accepted them."""
    return [(job_id, common.parse_iso(body["job"]["createdAt"])) for job_id, body in pika.jobs.items()]


def run_requests(
    label: str,
    durations: list[float],
    timings: dict[str, str],
    workers: int,
    redis: common.PrivateRedis,
    with_scheduler: bool,
    timeout: float,
) -> list[dict[str, Any]]:
    """Submit one request per entry of ``durations`` (the Pika job of the i-th submission accepted by
    Pika finishes that many seconds after it); return, per request, when its job finished and when
    its callback came."""
    out = common.OUT_DIR / "lag" / label
    out.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_urlsafe(24)
    redis.client.flushall()
    with common.provider_fakes(pika_duration=3600) as fakes:
        _replicate, pika, game = fakes
        for duration in durations:
            pika.queue_plan("finished", duration=duration)
        env = common.service_env(
            redis.url,
            fakes,
            api_key,
            out,
            WORKER_PROCESSES=str(workers),
            CAPTION_POLL_INTERVAL="0.1",
            **timings,
        )
        port = int(env["PORT"])
        started = []
        try:
            web = common.start_service("web", env, out)
            started.append(web)
            started.append(common.start_service("worker", env, out))
            if with_scheduler:
                started.append(common.start_service("scheduler", env, out))
            common.wait_http(common.local_url(port) + "/healthz", 30, web)
            common.wait_until(
                lambda: len(common.workers_registered(redis.client)) >= workers, 60, f"{workers} workers to register"
            )
            client = common.Client(common.local_url(port), api_key)
            ids = [f"{label}-{i}" for i in range(len(durations))]
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda rid: client.submit(rid).status_code, ids))
            if any(code != 202 for code in codes):
                raise BenchError(f"submissions answered {sorted(set(codes))}")
            common.wait_until(lambda: len(game.callbacks) >= len(ids), timeout, f"{len(ids)} callbacks", 0.2)
            time.sleep(0.5)  # a duplicate callback would show up now
            jobs = pika_jobs_in_order(pika)
            if len(jobs) != len(durations):
                raise BenchError(f"{len(jobs)} Pika submissions for {len(durations)} requests")
            finished_at = {job_id: created + durations[i] for i, (job_id, created) in enumerate(jobs)}
            created_at = dict(jobs)
            duration_of = {job_id: durations[i] for i, (job_id, _c) in enumerate(jobs)}
            polls = pika.polls
            last_poll: dict[str, float] = {}
            for req in pika.requests_for("job"):
                job_id = req.path.rsplit("/", 1)[-1]
                last_poll[job_id] = max(last_poll.get(job_id, 0.0), req.at)
            rows = []
            for rid in ids:
                callbacks = game.callbacks_for(rid)
                job_id = client.status(rid)["provider"]["job_id"]
                rows.append(
                    {
                        "request_id": rid,
                        "job_id": job_id,
                        "generation": duration_of[job_id],
                        "callbacks": len(callbacks),
                        "status": callbacks[0].status if callbacks else None,
                        "lag": callbacks[0].at - finished_at[job_id] if callbacks else None,
                        "since_submission": callbacks[0].at - created_at[job_id] if callbacks else None,
                        "polls": polls.get(job_id, 0),
                        "poll_to_callback": callbacks[0].at - last_poll[job_id] if callbacks else None,
                    }
                )
            return rows
        finally:
            for service in reversed(started):
                service.stop(timeout=10)


def run(quick: bool) -> Section:
    """Run the lag measurement and the schedule comparison; return the section of RESULTS.md."""
    n = 8 if quick else 40
    rng = random.Random(6)
    high = INITIAL_WAIT_TIME + (2 if quick else 3) * POLL_INTERVAL
    durations = [round(rng.uniform(0.2, high), 3) for _ in range(n)]
    redis = common.private_redis(common.OUT_DIR / "lag" / "redis")
    try:
        timings = {
            "INITIAL_WAIT_TIME": f"{INITIAL_WAIT_TIME:g}",
            "POLL_INTERVAL": f"{POLL_INTERVAL:g}",
            "MAX_CHECK_TIME": "60",
        }
        rows = run_requests("random", durations, timings, WORKERS, redis, True, 60 + n * 3)
        scaled: dict[str, list[dict[str, Any]]] = {}
        if not quick:
            generations = [g / SCALE for g in GENERATIONS]
            for name, (wait, poll) in (("default", DEFAULT_SCHEDULE), ("original", ORIGINAL_SCHEDULE)):
                deadline = (720.0 if name == "original" else 480.0) / SCALE
                scaled_timings = {
                    "INITIAL_WAIT_TIME": f"{wait / SCALE:g}",
                    "POLL_INTERVAL": f"{poll / SCALE:g}",
                    "MAX_CHECK_TIME": f"{deadline - wait / SCALE:g}",
                }
                scaled[name] = run_requests(
                    f"scaled-{name}", generations, scaled_timings, len(generations), redis, False, 90
                )
    finally:
        redis.stop()
    return report(rows, scaled, quick)


def report(rows: list[dict[str, Any]], scaled: dict[str, list[dict[str, Any]]], quick: bool) -> Section:
    """Markdown and verdicts of the lag part."""
    lags = sorted(r["lag"] for r in rows if r["lag"] is not None)
    missing = sum(1 for r in rows if r["callbacks"] != 1 or r["status"] != "COMPLETED")
    median, worst = statistics.median(lags), max(lags)
    want_median, want_max = POLL_INTERVAL / 2 + 0.3, POLL_INTERVAL + 1
    overheads = [r["poll_to_callback"] for r in rows if r["poll_to_callback"] is not None]
    quantiles = statistics.quantiles(lags, n=10) if len(lags) >= 2 else lags
    lines = [
        f"**Method.** The Procfile's `web`, `worker` (WORKER_PROCESSES={WORKERS}) and `scheduler` on a private "
        "Redis, against fake Replicate, Pika and GAME (the test fakes: real HTTP servers on 127.0.0.1). "
        f"INITIAL_WAIT_TIME={INITIAL_WAIT_TIME:g}, POLL_INTERVAL={POLL_INTERVAL:g}, MAX_CHECK_TIME=60, "
        f"everything else at its default. {len(rows)} requests; each Pika job has its own plan and finishes "
        f"a random time (uniform, fixed seed; {max(r['generation'] for r in rows):.1f} s at most) after its "
        "submission, so the moment it became `finished` is known exactly. "
        "Lag = time the callback reached the fake GAME - that moment.",
        "",
        table(
            ["requests", "callbacks (one each, COMPLETED)", "min", "p10", "median", "p90", "max", "mean"],
            [
                [
                    len(rows),
                    len(rows) - missing,
                    f"{lags[0]:.2f} s",
                    f"{quantiles[0]:.2f} s",
                    f"**{median:.2f} s**",
                    f"{quantiles[-1]:.2f} s",
                    f"**{worst:.2f} s**",
                    f"{statistics.mean(lags):.2f} s",
                ]
            ],
        ),
        "",
        f"Split of the lag: waiting for the next poll (finish → the poll that saw it) median "
        f"{statistics.median(r['lag'] - r['poll_to_callback'] for r in rows if r['lag'] is not None):.2f} s; "
        "the service's own part (that poll → callback received) median "
        f"{statistics.median(overheads):.3f} s, max {max(overheads):.3f} s.",
        "",
        f"Targets: median ≤ POLL_INTERVAL/2 + 0.3 s = {want_median:.1f} s, max ≤ POLL_INTERVAL + 1 s = "
        f"{want_max:.1f} s. A video that becomes ready at a random moment waits for the next poll, on average "
        "half an interval; the rest is the poll itself, writing the result and the callback POST.",
        "",
        "**Time to callback: default schedule against the original.** Counted from the Pika submission. "
        "Polls run at W, W + P, W + 2P, ... after the submission, so a video ready g seconds after it is "
        "seen at **T(g) = W + P · ⌈max(0, g - W) / P⌉** (plus a few milliseconds for the poll and the "
        "callback); it took **1 + ⌈max(0, g - W) / P⌉ polls**. Default: W = INITIAL_WAIT_TIME = 60 s, "
        "P = POLL_INTERVAL = 10 s. Original: W = 300 s, P = 10 s.",
        "",
    ]
    schedule_rows = []
    for g in GENERATIONS:
        new, old = time_to_callback(g, *DEFAULT_SCHEDULE), time_to_callback(g, *ORIGINAL_SCHEDULE)
        schedule_rows.append(
            [
                f"{g:g} s",
                f"{new:g} s",
                f"{old:g} s",
                f"{old - new:g} s",
                polls_made(g, *DEFAULT_SCHEDULE),
                polls_made(g, *ORIGINAL_SCHEDULE),
            ]
        )
    lines.append(
        table(
            ["generation g", "default: callback at", "original: callback at", "sooner by", "polls", "polls (orig.)"],
            schedule_rows,
        )
    )
    if scaled:
        lines += [
            "",
            f"**Cross-check, all timings ÷ {SCALE:g}** (web + worker on the same Redis, one request per "
            "generation time; INITIAL_WAIT_TIME, POLL_INTERVAL and the give-up deadline divided by "
            f"{SCALE:g}). Measured time from the Pika submission to the callback, scaled back x{SCALE:g}:",
            "",
        ]
        by_generation = {name: {round(r["generation"] * SCALE, 3): r for r in rows_} for name, rows_ in scaled.items()}
        check_rows = []
        for g in GENERATIONS:
            row = [f"{g:g} s"]
            for name, schedule in (("default", DEFAULT_SCHEDULE), ("original", ORIGINAL_SCHEDULE)):
                r = by_generation.get(name, {}).get(g)
                expected = time_to_callback(g, *schedule)
                if r is None or r["since_submission"] is None:
                    row += [f"{expected:g} s", "missing"]
                else:
                    row += [f"{expected:g} s", f"{r['since_submission'] * SCALE:.1f} s ({r['polls']} polls)"]
            check_rows.append(row)
        lines.append(
            table(
                ["generation g", "default: formula", "default: measured", "original: formula", "original: measured"],
                check_rows,
            )
        )
    elif quick:
        lines += ["", "(The scaled cross-check runs only in the full run.)"]
    section = Section("2. Callback lag", "\n".join(lines))
    section.targets = [
        ("lag: median (POLL_INTERVAL=2)", f"≤ {want_median:.1f} s", f"{median:.2f} s", median <= want_median),
        ("lag: max (POLL_INTERVAL=2)", f"≤ {want_max:.1f} s", f"{worst:.2f} s", worst <= want_max),
        ("lag: exactly one COMPLETED callback per request", f"{len(rows)}", f"{len(rows) - missing}", missing == 0),
    ]
    scaled_ok = all(
        r["since_submission"] is not None
        and abs(r["since_submission"] * SCALE - time_to_callback(r["generation"] * SCALE, *schedule)) <= SCALE * 0.5
        for name, schedule in (("default", DEFAULT_SCHEDULE), ("original", ORIGINAL_SCHEDULE))
        for r in scaled.get(name, [])
    )
    if scaled:
        section.targets.append(
            ("schedule formula matches the ÷20 run", "within one scaled poll", "yes" if scaled_ok else "no", scaled_ok)
        )
    section.data = {"rows": rows, "scaled": scaled, "median": median, "max": worst}
    return section
