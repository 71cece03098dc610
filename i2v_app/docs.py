"""Swagger UI's assets, served by the app itself so ``/docs`` works without internet."""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

assets = Blueprint("docs_assets", __name__)


@assets.get("/docs/assets/<path:filename>")
def swagger_asset(filename: str) -> Response:
    """Serve one file of the Swagger UI bundle."""
    return send_from_directory(str(swagger_ui_path), filename, max_age=86400)
