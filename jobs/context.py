"""What a job needs, built once per worker process from the settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry
from rq import Queue

from config import Settings, load_settings
from jobs.clients.game import GameClient
from jobs.clients.pika import PikaClient
from jobs.clients.replicate_captioner import ReplicateCaptioner
from jobs.slots import PikaSlots
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
    slots: PikaSlots


def resilient_redis(url: str) -> Redis:
    """A connection for worker-side processes that waits out a Redis outage instead of failing.

    Every command is retried with back-off until Redis answers again, so a job in flight pauses
    during an outage and carries on afterwards (and still calls back once), and the worker's own
    loop neither crashes nor needs a restart loop around it.
    """
    return Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.2), retries=-1),
        retry_on_error=[ConnectionError, TimeoutError],
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
    )


def build_context(settings: Settings) -> Context:
    """Assemble a context from settings."""
    redis = resilient_redis(settings.redis_url)
    return Context(
        settings=settings,
        redis=redis,
        store=RequestStore(redis, settings.record_ttl),
        queue=Queue(settings.queue_name, connection=redis),
        captioner=ReplicateCaptioner(settings),
        pika=PikaClient(settings),
        game=GameClient(settings),
        slots=PikaSlots(redis, settings.pika_max_concurrency, lease=settings.job_timeout),
    )


@functools.cache
def get_context() -> Context:
    """The process's context, from the environment (and `.env`)."""
    return build_context(load_settings())
