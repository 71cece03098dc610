"""Pipeline metrics, kept in Redis so that every worker process on every machine adds to one tally.

The web's ``/metrics`` turns the tally into Prometheus families at scrape time (see
``i2v_app.metrics``). One small hash; each event is one pipelined write.
"""

from __future__ import annotations

import math

from redis import Redis

KEY = "i2v:metrics"
#: Stage durations in seconds: captioning takes seconds, waiting for a video minutes.
STAGE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, math.inf)


def field(name: str, **labels: str) -> str:
    """The hash field of one series: ``name|label=value,...`` with labels sorted."""
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def count(redis: Redis, name: str, **labels: str) -> None:
    """Add one to a counter."""
    redis.hincrby(KEY, field(name, **labels), 1)


def observe_stage(redis: Redis, stage: str, seconds: float) -> None:
    """Record how long a stage took, as a histogram."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.hincrbyfloat(KEY, field("i2v_stage_duration_seconds_sum", stage=stage), seconds)
        pipe.hincrby(KEY, field("i2v_stage_duration_seconds_count", stage=stage), 1)
        for bound in STAGE_BUCKETS:
            if seconds <= bound:
                le = "+Inf" if math.isinf(bound) else repr(float(bound))
                pipe.hincrby(KEY, field("i2v_stage_duration_seconds_bucket", stage=stage, le=le), 1)
        pipe.execute()


def read(redis: Redis) -> dict[str, float]:
    """The whole tally, field → value."""
    return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in redis.hgetall(KEY).items()}
