"""Service information and liveness."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from i2v_app.schemas import HealthSchema, ServiceInfoSchema

blp = Blueprint("meta", __name__, url_prefix="/", description="Service information and health")

ENDPOINTS = [
    {"method": "POST", "path": "/api/v1/i2v", "description": "Submit an image; the result comes by callback"},
    {"method": "GET", "path": "/api/v1/i2v/{request_id}", "description": "A request's status"},
    {"method": "GET", "path": "/healthz", "description": "Liveness of the web process"},
    {"method": "GET", "path": "/openapi.json", "description": "OpenAPI specification"},
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
