"""The HTTP edge of i2v: validates requests, writes records, enqueues jobs and answers status."""

from __future__ import annotations

import logging

import click
from flask import Flask
from redis import Redis
from rq import Queue

from config import Settings, load_or_exit
from i2v_app import auth, dashboard, limits, metrics
from i2v_app.errors import ProblemApi, register_error_handlers
from jobs.store import RequestStore
from logs import configure_logging

__version__ = "1.0.0"

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Create the Flask app.

    Args:
        settings: the configuration; read from the environment (and `.env`) when not given.

    Raises:
        SystemExit: a setting is invalid (the message names the variable).
    """
    if settings is None:
        settings = load_or_exit("web")
    refuse_public_flask_run(settings)
    configure_logging(settings)

    app = Flask(__name__)
    app.config.update(
        API_TITLE="i2v",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        OPENAPI_REDOC_PATH="redoc",
        OPENAPI_REDOC_URL=settings.redoc_js_url,
        API_SPEC_OPTIONS={
            "info": {
                "description": (
                    "Turns a still image into a marketing video and calls back once with the result. "
                    "Try it in a browser in the [playground](/playground)."
                )
            }
        },
        JSON_SORT_KEYS=False,
    )
    attach_services(app, settings)
    metrics.install(app)
    auth.install(app, settings)
    dashboard.install(app, settings)
    limits.install(app, settings)

    api = ProblemApi(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "An API key from I2V_API_KEYS"}
    )
    from i2v_app import api as api_module
    from i2v_app import cli, dev, docs, media, meta, playground, uploads

    api.register_blueprint(api_module.blp)
    api.register_blueprint(uploads.blp)
    api.register_blueprint(meta.blp)
    app.register_blueprint(docs.assets)
    app.register_blueprint(media.media)
    app.register_blueprint(uploads.served)
    app.register_blueprint(playground.playground)
    if settings.development:
        app.register_blueprint(dev.dev)
    register_error_handlers(app)
    cli.register(app)
    return app


def refuse_public_flask_run(settings: Settings) -> None:
    """Stop ``flask run --host <public address>`` when an unsafe mode is on (gunicorn checks its own sockets).

    Raises:
        SystemExit: the host is not loopback and ``I2V_AUTH_DISABLED=1`` or development mode is set.
    """
    # flask run builds the app inside its command, so its options are the current click context's.
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command.name != "run" or "host" not in ctx.params:
        return
    problem = settings.public_listener_problem([str(ctx.params["host"])])
    if problem:
        raise SystemExit(f"i2v web: {problem}")


def attach_services(app: Flask, settings: Settings) -> None:
    """Attach settings, Redis, the queue and the record store to the app."""
    # Short socket timeouts: a Redis outage must turn into a quick 503, never a hung request.
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    app.extensions["i2v"] = {
        "settings": settings,
        "redis": redis,
        "queue": Queue(settings.queue_name, connection=redis),
        "store": RequestStore(redis, settings.record_ttl),
    }
