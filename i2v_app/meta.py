"""Service information and liveness."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from redis.exceptions import RedisError, ResponseError
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from i2v_app import services
from i2v_app.schemas import HealthSchema, ReadySchema, ServiceInfoSchema

blp = Blueprint("meta", __name__, url_prefix="/", description="Service information and health")

ENDPOINTS = [
    {"method": "POST", "path": "/api/v1/i2v", "description": "Submit an image; the result comes by callback"},
    {"method": "GET", "path": "/api/v1/i2v", "description": "This API key's requests, newest first"},
    {"method": "POST", "path": "/api/v1/uploads", "description": "Upload an image to use as image_id"},
    {"method": "GET", "path": "/api/v1/i2v/{request_id}", "description": "A request's status"},
    {"method": "DELETE", "path": "/api/v1/i2v/{request_id}", "description": "Cancel a request"},
    {"method": "POST", "path": "/api/v1/i2v/{request_id}/callback", "description": "Send a failed callback again"},
    {"method": "GET", "path": "/healthz", "description": "Liveness of the web process"},
    {"method": "GET", "path": "/readyz", "description": "Readiness: Redis, workers, queue depth"},
    {"method": "GET", "path": "/metrics", "description": "Prometheus metrics"},
    {"method": "GET", "path": "/media/{name}.mp4", "description": "Videos the service made or keeps"},
    {"method": "GET", "path": "/uploads/{name}", "description": "Uploaded images"},
    {"method": "GET", "path": "/openapi.json", "description": "OpenAPI specification"},
    {"method": "GET", "path": "/playground", "description": "Playground: upload an image, watch it become a video"},
    {"method": "GET", "path": "/docs", "description": "Swagger UI"},
    {"method": "GET", "path": "/redoc", "description": "ReDoc"},
]


@blp.route("/")
class ServiceInfo(MethodView):
    """The service's name, version and endpoints."""

    @blp.response(200, ServiceInfoSchema)
    def get(self) -> dict[str, Any]:
        """Describe the service and list its endpoints."""
        return {
            "name": "i2v",
            "version": current_app.config["API_VERSION"],
            "description": "Image to marketing video: CLIP Interrogator prompt, Pika animation, one callback.",
            "endpoints": ENDPOINTS,
        }


@blp.route("/healthz")
class Health(MethodView):
    """Liveness: answers while the web process is up, whatever Redis does."""

    @blp.response(200, HealthSchema)
    def get(self) -> dict[str, str]:
        """Say the process is alive."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    """Readiness: Redis answers and a worker is registered; reports queue depth and Redis policy."""

    @blp.response(200, ReadySchema)
    @blp.alt_response(503, schema=ReadySchema, description="Not ready: Redis unreachable or no worker")
    def get(self) -> tuple[dict[str, Any], int]:
        """Say whether the service can take and run requests now."""
        report: dict[str, Any] = {"redis": "ok", "workers": 0, "queue_depth": None, "eviction_policy": None}
        warnings: list[str] = []
        try:
            queue = services.queue()
            with services.redis().pipeline(transaction=False) as pipe:
                pipe.scard(WORKERS_BY_QUEUE_KEY % queue.name)
                pipe.llen(queue.key)
                report["workers"], report["queue_depth"] = pipe.execute()
            report["eviction_policy"] = eviction_policy()
        except RedisError:
            report["redis"] = "unreachable"
        if report["eviction_policy"] not in (None, "noeviction"):
            warnings.append(f"maxmemory-policy {report['eviction_policy']} can evict queued jobs; use noeviction")
        if report["redis"] == "ok" and not report["workers"]:
            warnings.append("no worker is registered: requests will wait in the queue")
        ready = report["redis"] == "ok" and report["workers"] > 0
        return {"status": "ready" if ready else "not ready", **report, "warnings": warnings}, 200 if ready else 503


def eviction_policy() -> str | None:
    """Redis's ``maxmemory-policy``, or None where CONFIG is not allowed (managed Redis)."""
    try:
        policy = services.redis().config_get("maxmemory-policy").get("maxmemory-policy")
    except ResponseError:
        return None
    return policy.decode() if isinstance(policy, bytes) else policy
