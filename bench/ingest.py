"""Part 1, ingest: ``POST /api/v1/i2v`` under wrk against a bare Flask endpoint on the same gunicorn.

Both apps run under the Procfile's ``web`` command (the bare one with ``wsgi:app`` swapped for
``bench.bare_app:app``) with the same environment for gunicorn: WEB_CONCURRENCY=4 and the default
worker (sync). wrk runs on 127.0.0.1, alternating bare and service rounds; the private Redis is
flushed before every round. After each service round the bench checks that every 202 left a record
and a real RQ job in the queue, and reads Redis's per-command statistics for the round. One more
round of each app with GUNICORN_THREADS=4 shows what threaded workers would change.
"""

from __future__ import annotations

import json
import resource
import secrets
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import BenchError, Section, Service, table

CONNECTIONS = 32
WRK_THREADS = 2
WEB_CONCURRENCY = "4"
#: The comparison round: threaded gunicorn workers instead of gunicorn.conf.py's default (sync).
THREADED = "4"
TARGET_RATIO = 0.35
TARGET_P99_MS = 30.0
LUA = common.BENCH_DIR / "submit.lua"
SUBMIT_PATH = "/api/v1/i2v"
QUEUE = "i2v"


def wrk_binary() -> str:
    """wrk on PATH, or a clear error (``make bench`` installs it)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk); `make bench` installs it")
    return binary


def run_wrk(url: str, seconds: float, run_id: str, api_key: str, tree: list[int], redis_pid: int) -> dict[str, Any]:
    """One wrk run; returns its counts and latencies plus the CPU used by each party meanwhile."""
    env = common.base_env(BENCH_API_KEY=api_key, BENCH_IMAGE_URL=common.IMAGE_URL, BENCH_RUN=run_id)
    argv = [
        wrk_binary(),
        f"-t{WRK_THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    web_before = sum(common.cpu_seconds(p) for p in tree)
    redis_before = common.cpu_seconds(redis_pid)
    busy_before, total_before = common.machine_cpu()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False)
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after, total_after = common.machine_cpu()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["codes"] = {int(k): v for k, v in result["codes"].items()}
    result["non_2xx"] = sum(n for code, n in result["codes"].items() if not 200 <= code < 300)
    errors = result["errors"]
    result["socket_errors"] = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    wrk_cpu = sum(getattr(children_after, f) - getattr(children_before, f) for f in ("ru_utime", "ru_stime"))
    web_cpu = sum(common.cpu_seconds(p) for p in tree) - web_before
    redis_cpu = common.cpu_seconds(redis_pid) - redis_before
    machine_busy = busy_after - busy_before
    result["cpu"] = {
        "web": web_cpu,
        "redis": redis_cpu,
        "wrk": wrk_cpu,
        "other": max(0.0, machine_busy - web_cpu - redis_cpu - wrk_cpu),
        "machine_capacity": total_after - total_before,
        "wall": wall,
    }
    result["web_cpu_us_per_request"] = web_cpu / max(result["requests"], 1) * 1e6
    result["redis_cpu_us_per_request"] = redis_cpu / max(result["requests"], 1) * 1e6
    return result


def verify_round(redis: Any, answered_202: int) -> dict[str, Any]:
    """Every 202 must have made a record and a real RQ job, queued and pointing at that record."""
    # Requests in flight when wrk stopped are still being answered: count once the writes have settled.
    last = -1
    deadline = time.monotonic() + 15
    while (size := redis.dbsize()) != last and time.monotonic() < deadline:
        last = size
        time.sleep(0.5)
    records = sum(1 for _ in redis.scan_iter(match="i2v:req:*", count=5000))
    job_hashes = sum(1 for _ in redis.scan_iter(match="rq:job:i2v-*", count=5000))
    queued = [j.decode() for j in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)]
    with redis.pipeline(transaction=False) as pipe:
        for job_id in queued:
            pipe.exists("i2v:req:" + job_id.removeprefix("i2v-"))
        orphans = sum(1 for found in pipe.execute() if not found)
    sample = queued[:: max(1, len(queued) // 25)][:25]
    bad_jobs = 0
    if sample:
        from rq.job import Job

        for job in Job.fetch_many(sample, connection=redis):
            ok = (
                job is not None
                and job.func_name == "jobs.pipeline.run_request"
                and job.origin == QUEUE
                and redis.exists(job.args[0])
            )
            bad_jobs += 0 if ok else 1
    ok = (
        records == len(queued) == job_hashes
        and orphans == 0
        and bad_jobs == 0
        and answered_202 <= records <= answered_202 + CONNECTIONS
    )
    return {
        "records": records,
        "queued_jobs": len(queued),
        "job_hashes": job_hashes,
        "jobs_without_record": orphans,
        "sampled_jobs": len(sample),
        "bad_sampled_jobs": bad_jobs,
        "answered_202": answered_202,
        "ok": ok,
    }


def command_stats(redis: Any) -> dict[str, dict[str, float]]:
    """INFO commandstats as {command: {calls, usec_per_call}}."""
    stats = {}
    for name, value in redis.info("commandstats").items():
        stats[name.removeprefix("cmdstat_")] = {"calls": value["calls"], "usec_per_call": value["usec_per_call"]}
    return stats


def start_web(name: str, env: dict[str, str], log_dir: Path, command: str, port: int, api_key: str) -> Service:
    """Start one gunicorn and wait until its submit route answers."""
    service = common.start_service(name, env, log_dir, command=command)
    common.wait_http(
        common.local_url(port) + SUBMIT_PATH,
        30,
        service,
        method="POST",
        json={"image_id": common.IMAGE_URL},
        headers={"Authorization": f"Bearer {api_key}", "x-request-id": f"warmup-{name}"},
    )
    return service


def profile_in_process(env: dict[str, str], requests_n: int, log_dir: Path) -> dict[str, Any] | None:
    """Per-request CPU of both apps in one process (Flask test client, no server), and where it goes."""
    argv = [common.python(), "-m", "bench.profile_submit", str(requests_n)]
    done = subprocess.run(argv, env=env, cwd=common.ROOT, capture_output=True, text=True, timeout=300, check=False)
    (log_dir / "profile.log").write_text(done.stderr)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    return json.loads(line.removeprefix("BENCH_JSON ")) if line else None


def run(quick: bool) -> Section:
    """Run the ingest comparison and return its section of RESULTS.md."""
    wrk_binary()
    rounds, seconds, warmup = (1, 2.0, 1.0) if quick else (3, 10.0, 2.0)
    out = common.OUT_DIR / "ingest"
    out.mkdir(parents=True, exist_ok=True)
    redis = common.private_redis(out / "redis")
    api_key = secrets.token_urlsafe(24)
    web_command = common.procfile_command("web")
    if "wsgi:app" not in web_command:
        raise BenchError(f"the Procfile's web command does not serve wsgi:app: {web_command}")
    bare_command = web_command.replace("wsgi:app", "bench.bare_app:app")
    gunicorn_env = {"HOST": "127.0.0.1", "WEB_CONCURRENCY": WEB_CONCURRENCY}
    service_port, bare_port = common.new_port(), common.new_port()
    service_env = common.base_env(
        **gunicorn_env,
        PORT=str(service_port),
        PROMETHEUS_MULTIPROC_DIR=str(out / "metrics-service"),
        REDIS_URL=redis.url,
        I2V_API_KEYS=api_key,
        MAX_QUEUED="100000000",
    )
    bare_env = common.base_env(**gunicorn_env, PORT=str(bare_port), PROMETHEUS_MULTIPROC_DIR=str(out / "metrics-bare"))
    commands = {"service": web_command, "bare": bare_command}
    envs = {"service": service_env, "bare": bare_env}
    urls = {"service": common.local_url(service_port) + SUBMIT_PATH, "bare": common.local_url(bare_port) + SUBMIT_PATH}

    def start_both(extra: dict[str, str]) -> dict[str, Service]:
        procs = {
            kind: start_web(
                f"web-{kind}", {**envs[kind], **extra}, out, commands[kind], int(envs[kind]["PORT"]), api_key
            )
            for kind in ("service", "bare")
        }
        for kind, proc in procs.items():  # warm both up (imports, connections), not counted
            run_wrk(urls[kind], warmup, f"warm-{kind}", api_key, proc.pids(), redis.pid)
        return procs

    def one_round(kind: str, proc: Service, run_id: str) -> dict[str, Any]:
        redis.client.flushall()
        redis.client.config_resetstat()
        if not proc.alive():
            raise BenchError(f"{proc.name} died:\n{proc.tail()}")
        return run_wrk(urls[kind], seconds, run_id, api_key, proc.pids(), redis.pid)

    try:
        procs = start_both({})
        results: dict[str, list[dict[str, Any]]] = {"bare": [], "service": []}
        checks: list[dict[str, Any]] = []
        stats: list[dict[str, Any]] = []
        for n in range(rounds):
            order = ("bare", "service") if n % 2 == 0 else ("service", "bare")
            for kind in order:
                result = one_round(kind, procs[kind], f"r{n}-{kind}")
                result["round"] = n + 1
                results[kind].append(result)
                if kind == "service":  # the command counts first: the verification runs commands of its own
                    stats.append({"requests": result["requests"], "commands": command_stats(redis.client)})
                    checks.append(verify_round(redis.client, result["codes"].get(202, 0)))
        for proc in procs.values():
            proc.stop(timeout=10)
        procs = start_both({"GUNICORN_THREADS": THREADED})
        threaded = {kind: one_round(kind, procs[kind], f"threads-{kind}") for kind in ("bare", "service")}
        for proc in procs.values():
            proc.stop(timeout=10)
        queue_at_end = checks[-1]["queued_jobs"] if checks else 0
        redis.client.flushall()
        profile = profile_in_process({**service_env, "BENCH_API_KEY": api_key}, 200 if quick else 3000, out)
    finally:
        for name in ("web-service", "web-bare"):
            for proc in [s for s in common._STARTED if s.name == name]:
                proc.stop(timeout=10)
                common._STARTED.remove(proc)
        redis.stop()
    return report(results, checks, stats, queue_at_end, rounds, seconds, profile, threaded)


def _ms(us: float) -> str:
    return f"{us / 1000:.1f}"


def report(
    results: dict[str, list[dict[str, Any]]],
    checks: list[dict[str, Any]],
    stats: list[dict[str, Any]],
    queue_at_end: int,
    rounds: int,
    seconds: float,
    profile: dict[str, Any] | None,
    threaded: dict[str, dict[str, Any]],
) -> Section:
    """Markdown and verdicts of the ingest part."""
    bare_rps = statistics.mean(r["rps"] for r in results["bare"])
    service_rps = statistics.mean(r["rps"] for r in results["service"])
    ratio = service_rps / bare_rps
    p99 = max(r["latency_us"]["p99"] for r in results["service"]) / 1000
    non_2xx = sum(r["non_2xx"] + r["socket_errors"] for r in results["service"])
    all_ok = all(c["ok"] for c in checks)
    rows = []
    for n in range(rounds):
        for kind in ("bare", "service"):
            r = results[kind][n]
            cpu = r["cpu"]
            rows.append(
                [
                    n + 1,
                    kind,
                    f"{r['rps']:.0f}",
                    _ms(r["latency_us"]["p50"]),
                    _ms(r["latency_us"]["p90"]),
                    _ms(r["latency_us"]["p99"]),
                    _ms(r["latency_us"]["max"]),
                    r["requests"],
                    r["non_2xx"],
                    r["socket_errors"],
                    f"{r['web_cpu_us_per_request']:.0f}",
                    f"{cpu['redis'] / cpu['wall'] * 100:.0f} / {cpu['wrk'] / cpu['wall'] * 100:.0f} / "
                    f"{cpu['other'] / cpu['wall'] * 100:.0f}",
                ]
            )
    per_round = [s["rps"] / b["rps"] for s, b in zip(results["service"], results["bare"], strict=True)]
    lines = [
        "**Method.** wrk (2 threads, 32 connections, `--latency`, script `bench/submit.lua`) on 127.0.0.1 "
        f"against `POST /api/v1/i2v`: {rounds} round(s) x {seconds:g} s for each app, alternating bare and "
        "service, after a short warm-up of each. Each request carries `Authorization: Bearer <key>` "
        "(I2V_API_KEYS holds one key), a unique `x-request-id` (thread number + counter) and "
        '`{"image_id": "<public https URL>"}`. The service runs the full path: authentication, validation, '
        "the idempotency check, the record and a real RQ job in one transaction, and the ETA in the reply. "
        "The baseline is `bench/bare_app.py` (one POST route returning a small JSON 202). Both are served by "
        "the Procfile's `web` command (`wsgi:app` swapped for `bench.bare_app:app` for the baseline) with the "
        f"same environment: WEB_CONCURRENCY={WEB_CONCURRENCY} and gunicorn.conf.py unchanged (its default "
        "worker: sync, one request at a time per process; access log on). Redis is a private redis-server "
        "started as `make run` starts it (AOF on), flushed before each round; RATE_LIMIT unset, "
        "MAX_QUEUED=100000000, no worker running (the queue only grows).",
        "",
        table(
            [
                "round",
                "app",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "requests",
                "non-2xx",
                "socket errors",
                "web CPU µs/req",
                "CPU % Redis / wrk / others",
            ],
            rows,
        ),
        "",
        "`web CPU µs/req` is the CPU time of the gunicorn master and workers divided by the requests "
        "answered. `others` is CPU used on this machine by processes outside the benchmark during the "
        "round (100 % = one core; the machine has 2), which is noise in these numbers.",
        "",
        f"Mean: bare {bare_rps:.0f} req/s, service {service_rps:.0f} req/s, ratio **{ratio:.2f}** "
        f"(per round: {', '.join(f'{x:.2f}' for x in per_round)}). Service p99 (worst round): **{p99:.1f} ms**; "
        f"bare p99 (worst round): {max(r['latency_us']['p99'] for r in results['bare']) / 1000:.1f} ms.",
        "",
        "**Every 202 made a record and a real RQ job.** After each service round: `i2v:req:*` keys, jobs "
        "in `rq:queue:i2v`, `rq:job:i2v-*` hashes, queued jobs whose record is missing, and a sample of jobs "
        "fetched through RQ (function `jobs.pipeline.run_request`, queue `i2v`, record present). Records may "
        "exceed the 202s wrk counted by the requests still in flight when wrk stopped (at most 32).",
        "",
        table(
            ["round", "202s (wrk)", "records", "queued jobs", "job hashes", "jobs without record", "bad sampled", "ok"],
            [
                [
                    n + 1,
                    c["answered_202"],
                    c["records"],
                    c["queued_jobs"],
                    c["job_hashes"],
                    c["jobs_without_record"],
                    f"{c['bad_sampled_jobs']}/{c['sampled_jobs']}",
                    "yes" if c["ok"] else "**no**",
                ]
                for n, c in enumerate(checks)
            ],
        ),
    ]
    lines += ["", *gap_analysis(results, ratio, p99), "", *threaded_markdown(results, threaded, seconds)]
    if stats:
        last = stats[-1]
        n_req = max(last["requests"], 1)
        cmd_rows = [
            [name, f"{v['calls'] / n_req:.2f}", f"{v['usec_per_call']:.1f}"]
            for name, v in sorted(last["commands"].items(), key=lambda kv: -kv[1]["calls"])
            if v["calls"] / n_req >= 0.01
        ]
        total_calls = sum(v["calls"] for v in last["commands"].values()) / n_req
        lines += [
            "",
            f"**Redis work per submission** (last service round, INFO commandstats; the queue grew from 0 to "
            f"{queue_at_end} jobs): {total_calls:.1f} commands per request.",
            "",
            table(["command", "calls per request", "µs per call (in Redis)"], cmd_rows),
        ]
    if profile:
        lines += ["", *profile_markdown(profile)]
    section = Section("1. Ingest", "\n".join(lines))
    section.targets = [
        ("ingest: service/bare req/s, 32 connections", f"≥ {TARGET_RATIO:.2f}", f"{ratio:.2f}", ratio >= TARGET_RATIO),
        ("ingest: service p99", f"≤ {TARGET_P99_MS:g} ms", f"{p99:.1f} ms", p99 <= TARGET_P99_MS),
        ("ingest: non-2xx and socket errors", "0", str(non_2xx), non_2xx == 0),
        ("ingest: every 202 has a record and a queued RQ job", "all rounds", "yes" if all_ok else "no", all_ok),
    ]
    section.data = {
        "bare_rps": bare_rps,
        "service_rps": service_rps,
        "ratio": ratio,
        "p99_ms": p99,
        "non_2xx": non_2xx,
        "rounds": results,
        "checks": checks,
        "profile": profile,
        "threaded": threaded,
    }
    return section


def _cpu_per_request(rounds: list[dict[str, Any]], part: str) -> float:
    """Mean CPU µs per request of one party (web, redis, wrk) over rounds."""
    return statistics.mean(r["cpu"][part] / max(r["requests"], 1) * 1e6 for r in rounds)


def gap_analysis(results: dict[str, list[dict[str, Any]]], ratio: float, p99: float) -> list[str]:
    """Why the numbers are what they are, and what the targets would take."""
    cpu = {
        kind: {part: _cpu_per_request(results[kind], part) for part in ("web", "redis", "wrk")}
        for kind in ("bare", "service")
    }
    total = {kind: sum(cpu[kind].values()) for kind in cpu}
    predicted = total["bare"] / total["service"]
    needed_web = total["bare"] / TARGET_RATIO - cpu["service"]["redis"] - cpu["service"]["wrk"]
    cut = cpu["service"]["web"] - needed_web
    bare_rps = statistics.mean(r["rps"] for r in results["bare"])
    service_rps = statistics.mean(r["rps"] for r in results["service"])
    bare_p99 = max(r["latency_us"]["p99"] for r in results["bare"]) / 1000
    lines = [
        "**Reading the numbers.** Both apps keep the 2 cores busy (gunicorn, Redis and wrk share them), so "
        "requests per second follow CPU per request. CPU µs per request, web / Redis / wrk: bare "
        f"{cpu['bare']['web']:.0f} / {cpu['bare']['redis']:.0f} / {cpu['bare']['wrk']:.0f}, service "
        f"{cpu['service']['web']:.0f} / {cpu['service']['redis']:.0f} / {cpu['service']['wrk']:.0f}. The ratio "
        f"of the totals predicts {predicted:.2f}; measured {ratio:.2f}.",
    ]
    if ratio < TARGET_RATIO:
        lines += [
            "",
            f"*Gap to {TARGET_RATIO:.2f}:* at the same Redis and wrk cost the service's web processes would have "
            f"to spend at most {needed_web:.0f} µs of CPU per submission instead of {cpu['service']['web']:.0f} "
            f"(cut {cut:.0f} µs, {cut / cpu['service']['web'] * 100:.0f} %). The profile below shows where that "
            "time goes.",
        ]
    lines += [
        "",
        f"*p99:* with 32 connections always busy, Little's law puts the mean latency at 32 / throughput: "
        f"{32 / service_rps * 1000:.1f} ms for the service and {32 / bare_rps * 1000:.1f} ms for the bare "
        f"endpoint. A p99 of {TARGET_P99_MS:g} ms needs a mean well under that, so more than "
        f"{32 / (TARGET_P99_MS / 1000):.0f} req/s even with no variance at all; the service's spread is "
        f"small because sync workers take each new connection from one shared accept queue (its p99 here: "
        f"{p99:.1f} ms; the bare endpoint's: {bare_p99:.1f} ms).",
    ]
    return lines


def threaded_markdown(
    results: dict[str, list[dict[str, Any]]], threaded: dict[str, dict[str, Any]], seconds: float
) -> list[str]:
    """The comparison round with threaded gunicorn workers."""
    rows = []
    for kind in ("bare", "service"):
        sync_rps = statistics.mean(r["rps"] for r in results[kind])
        sync_p99 = max(r["latency_us"]["p99"] for r in results[kind]) / 1000
        t = threaded[kind]
        rows.append(
            [
                kind,
                f"{sync_rps:.0f}",
                _ms(sync_p99 * 1000),
                f"{t['rps']:.0f}",
                _ms(t["latency_us"]["p99"]),
                t["non_2xx"],
            ]
        )
    return [
        f"**Threaded workers instead** (one round of {seconds:g} s per app, GUNICORN_THREADS={THREADED}, everything "
        "else the same; a single round, so its req/s swing from run to run). With threads, wrk's kept-alive "
        "connections stay with the process that accepted them, so a busy process keeps its queue while "
        "another idles, and the tail grows for both apps; that is why gunicorn.conf.py defaults to sync workers.",
        "",
        table(
            ["app", "sync req/s", "sync p99 ms (worst round)", "threaded req/s", "threaded p99 ms", "threaded non-2xx"],
            rows,
        ),
    ]


def profile_markdown(profile: dict[str, Any]) -> list[str]:
    """Where a submission's time goes, from the in-process profile."""
    bare, service = profile["bare"], profile["service"]
    rows = [
        [group, f"{service['groups'].get(group, 0):.0f}", f"{bare['groups'].get(group, 0):.0f}"]
        for group in sorted(service["groups"], key=lambda g: -service["groups"][g])
        if service["groups"][group] >= 5
    ]
    return [
        f"**Where the time goes** (one process, Flask test client, {profile['requests']} submissions on an "
        "empty Redis queue, no server): "
        f"bare {bare['us_per_request']:.0f} µs per request, service {service['us_per_request']:.0f} µs "
        f"({service['us_per_request'] / bare['us_per_request']:.1f}x); the service makes "
        f"{service['redis_round_trips']:.1f} Redis round trips per submission. Self time by package under "
        "cProfile (µs per request, inflated by the profiler; `redis wait` is time blocked on the socket):",
        "",
        table(["package", "service µs/req", "bare µs/req"], rows),
        "",
        "Inclusive time of the steps of a submission under the same profile (µs per request):",
        "",
        table(["step", "µs/req"], [[label, f"{us:.0f}"] for label, us in service["steps"].items()]),
        "",
        "The service's top functions by self time under the profile:",
        "",
        table(
            ["function", "calls/req", "µs/req"],
            [
                [f"`{f['function']}`", f"{f['calls_per_request']:.1f}", f"{f['us_per_request']:.0f}"]
                for f in service.get("functions", [])
            ],
        ),
    ]
