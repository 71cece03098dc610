"""What a job needs, built once per worker process from the settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from redis import Redis
from rq import Queue

from config import Settings, load_settings
from jobs.clients.game import GameClient
from jobs.clients.pika import PikaClient
from jobs.clients.replicate_captioner import ReplicateCaptioner
from jobs.store import RequestStore


@dataclass
class Context:
    """Settings, Redis, the record store, the queue and one client per provider."""

    settings: Settings
    redis: Redis
    store: RequestStore
    queue: Queue
    captioner: ReplicateCaptioner
    pika: PikaClient
    game: GameClient


def build_context(settings: Settings) -> Context:
    """Assemble a context from settings."""
    redis = Redis.from_url(settings.redis_url)
    return Context(
        settings=settings,
        redis=redis,
        store=RequestStore(redis, settings.record_ttl),
        queue=Queue(settings.queue_name, connection=redis),
        captioner=ReplicateCaptioner(settings),
        pika=PikaClient(settings),
        game=GameClient(settings),
    )


@functools.cache
def get_context() -> Context:
    """The process's context, from the environment (and `.env`)."""
    return build_context(load_settings())
