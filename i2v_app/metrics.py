"""Prometheus ``/metrics``: HTTP traffic of every gunicorn worker, and the pipeline's tally.

HTTP counters use prometheus_client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set
(gunicorn.conf.py sets it), so a scrape answered by any gunicorn worker counts all of them. The
pipeline's numbers (jobs by outcome, stage durations, provider errors, callback attempts) live in
Redis (``jobs.metrics``) and the queue's depth and requests in flight are read at scrape time.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from rq.registry import StartedJobRegistry

from i2v_app import services
from jobs import metrics as tally

HTTP_REQUESTS = Counter("i2v_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram("i2v_http_request_duration_seconds", "Time to answer an HTTP request", ["route"])

_FIELD = re.compile(r"^(?P<name>[a-z0-9_]+)\|(?P<labels>.*)$")
_HELP = {
    "i2v_jobs_total": "Requests finished, by outcome (completed or an error code)",
    "i2v_provider_errors_total": "Provider answers that were retried, by provider and kind",
    "i2v_callback_attempts_total": "Callback delivery attempts, by outcome",
}

metrics_blp = Blueprint("metrics", __name__)

#: Methods counted under their own name; any other counts as ``other``, so that requests with made-up
#: methods cannot add label values (and multiprocess files, and scrape lines) without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label of a request: a known HTTP method, or ``other``."""
    return method if method in KNOWN_METHODS else "other"


class PipelineCollector(Collector):
    """Turns the Redis tally and the queue's state into metric families at scrape time."""

    def collect(self) -> Iterator[Metric]:
        """Yield the pipeline's families (nothing when Redis cannot be read)."""
        try:
            values = tally.read(services.redis())
            queue = services.queue()
            depth = len(queue)
            in_flight = StartedJobRegistry(queue=queue).count
        except RedisError:
            return
        yield GaugeMetricFamily("i2v_queue_depth", "Requests waiting for a worker", value=depth)
        yield GaugeMetricFamily("i2v_requests_in_flight", "Requests a worker is running now", value=in_flight)
        families: dict[str, Metric] = {}
        histogram: dict[str, dict] = {}
        for key, value in sorted(values.items()):
            match = _FIELD.match(key)
            if not match:
                continue
            name = match["name"]
            labels = dict(pair.split("=", 1) for pair in match["labels"].split(",") if pair)
            if name.startswith("i2v_stage_duration_seconds"):
                entry = histogram.setdefault(labels["stage"], {"buckets": {}, "sum": 0.0})
                if name.endswith("_bucket"):
                    entry["buckets"][labels["le"]] = value
                elif name.endswith("_sum"):
                    entry["sum"] = value
                continue
            family = families.get(name)
            if family is None:
                family = CounterMetricFamily(name.removesuffix("_total"), _HELP.get(name, name), labels=sorted(labels))
                families[name] = family
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()
        if histogram:
            family = HistogramMetricFamily("i2v_stage_duration_seconds", "Time spent in each stage", labels=["stage"])
            for stage, entry in histogram.items():
                bounds = ["+Inf" if math.isinf(b) else repr(float(b)) for b in tally.STAGE_BUCKETS]
                family.add_metric([stage], [(le, entry["buckets"].get(le, 0.0)) for le in bounds], entry["sum"])
            yield family


@metrics_blp.get("/metrics")
def scrape() -> Response:
    """Prometheus text format: HTTP traffic of all gunicorn workers and the pipeline's tally."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (HTTP_REQUESTS, HTTP_LATENCY):
            registry.register(collector)
    registry.register(PipelineCollector())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def install(app: Flask) -> None:
    """Count every request by route template (never by raw path, which would explode labels)."""
    app.register_blueprint(metrics_blp)

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        HTTP_REQUESTS.labels(method_label(request.method), route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - g.get("metrics_started", time.perf_counter()))
        return response
