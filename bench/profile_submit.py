"""Where one submission's time goes: both apps in one process through Flask's test client, no server.

Run by the ingest part as ``python -m bench.profile_submit N`` with the service's environment (its
Redis, I2V_API_KEYS, PROMETHEUS_MULTIPROC_DIR) plus BENCH_API_KEY. It prints one line
``BENCH_JSON {...}``: microseconds per request without a profiler, then cProfile self time grouped by
package, inclusive time of the steps of the request path, and Redis round trips per submission.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import IMAGE_URL, ROOT

#: Inclusive time of these functions: (label, path suffix, function name).
STEPS = (
    ("whole request (Flask.wsgi_app)", "flask/app.py", "wsgi_app"),
    ("authentication (auth.authenticate)", "i2v_app/auth.py", "authenticate"),
    ("edge limits (limits.check_limits)", "i2v_app/limits.py", "check_limits"),
    ("metrics hooks (before + after)", "i2v_app/metrics.py", ("start_timer", "count")),
    ("reading and validating the submission (webargs, both schemas)", "webargs/core.py", "parse"),
    ("view: Submissions.post", "i2v_app/api.py", "post"),
    ("record + RQ job in one round trip (lifecycle.submit)", "i2v_app/lifecycle.py", "submit"),
    ("of which making the RQ job (store.pipeline_job)", "jobs/store.py", "pipeline_job"),
    ("of which the round trip (RequestStore._run_create)", "jobs/store.py", "_run_create"),
    ("ETA for the reply (eta.estimate)", "i2v_app/eta.py", "estimate"),
)


def group_of(filename: str, funcname: str) -> str:
    """The package a profiled function belongs to (socket calls count as waiting on Redis)."""
    if filename == "~":
        if any(word in funcname for word in ("socket", "recv", "sendall", "hiredis", "poll", "select")):
            return "redis wait (socket)"
        return "builtins"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    path = Path(filename)
    if path.is_relative_to(ROOT):
        return path.relative_to(ROOT).parts[0].removesuffix(".py")
    return "stdlib"


def drive(app: Any, n: int, prefix: str, api_key: str) -> None:
    """POST ``n`` distinct submissions."""
    client = app.test_client()
    body = json.dumps({"image_id": IMAGE_URL})
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    for i in range(n):
        resp = client.post("/api/v1/i2v", data=body, headers={**headers, "x-request-id": f"{prefix}-{i}"})
        if resp.status_code != 202:
            raise SystemExit(f"unexpected {resp.status_code}: {resp.get_data(as_text=True)[:300]}")


def measure(app: Any, n: int, api_key: str, flush: Any) -> dict[str, Any]:
    """Per-request time without and with the profiler, and the profile's breakdown."""
    drive(app, min(200, n), "warm", api_key)
    flush()
    started = time.perf_counter()
    drive(app, n, "plain", api_key)
    plain = (time.perf_counter() - started) / n * 1e6
    flush()
    profiler = cProfile.Profile()
    profiler.enable()
    drive(app, n, "profiled", api_key)
    profiler.disable()
    flush()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    round_trips = 0
    for (filename, _line, funcname), (_cc, ncalls, tottime, _ct, _callers) in stats.items():
        group = group_of(filename, funcname)
        groups[group] = groups.get(group, 0.0) + tottime / n * 1e6
        if funcname == "send_packed_command" and filename.endswith("redis/connection.py"):
            round_trips += ncalls
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
    functions = [
        {
            "function": f"{_short(filename)}:{funcname}",
            "calls_per_request": ncalls / n,
            "us_per_request": tottime / n * 1e6,
        }
        for (filename, _line, funcname), (_cc, ncalls, tottime, _ct, _callers) in top
    ]
    steps = {}
    for label, suffix, names in STEPS:
        wanted = (names,) if isinstance(names, str) else names
        total = sum(
            ct
            for (filename, _l, funcname), (_cc, _nc, _tt, ct, _c) in stats.items()
            if filename.endswith(suffix) and funcname in wanted
        )
        steps[label] = total / n * 1e6
    return {
        "us_per_request": plain,
        "groups": groups,
        "steps": steps,
        "functions": functions,
        "redis_round_trips": round_trips / n,
    }


def _short(filename: str) -> str:
    """A profiled file's name without the machine's directories."""
    if filename == "~":
        return "builtin"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    path = Path(filename)
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    return "stdlib/" + path.name


def main() -> None:
    """Measure the service's app and the bare app; print the result line."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    api_key = os.environ["BENCH_API_KEY"]
    from bench.bare_app import app as bare_app
    from config import load_settings
    from i2v_app import create_app

    app = create_app(load_settings(dotenv=False))
    redis = app.extensions["i2v"]["redis"]
    redis.flushall()
    result = {
        "requests": n,
        "service": measure(app, n, api_key, redis.flushall),
        "bare": measure(bare_app, n, api_key, lambda: None),
    }
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
