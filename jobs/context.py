"""What a job needs, built once per worker process from the settings."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry
from rq import Queue

from config import Settings, load_or_exit
from jobs.backends import Captioner, VideoBackend
from jobs.clients.game import GameClient
from jobs.clients.local_backends import ImageSource, LocalCaptioner, LocalVideo
from jobs.clients.pika import PikaClient
from jobs.clients.replicate import ReplicateAPI, ReplicateCaptioner, ReplicateVideo
from jobs.errors import GenerationFailed
from jobs.fetch import FetchError, download
from jobs.heavy import HeavySteps
from jobs.media import MediaStore
from jobs.slots import VideoSlots
from jobs.store import RequestStore
from jobs.waiting import CANCEL_CHECK_INTERVAL, WaitingRoom

#: Largest provider video the service copies into its media store.
VIDEO_MAX_BYTES = 500 * 1024 * 1024


@dataclass
class Context:
    """Settings, Redis, the record store, the queue, and the configured backends and clients."""

    settings: Settings
    redis: Redis
    store: RequestStore
    queue: Queue
    captioner: Captioner
    video: VideoBackend
    game: GameClient
    slots: VideoSlots
    media: MediaStore
    #: The process's cap on memory-heavy steps (``WORKER_HEAVY_STEPS``), shared by its threads.
    heavy: HeavySteps
    #: Where the process's requests sleep; their cancel reads and progress writes are batched there.
    waiting: WaitingRoom


def resilient_redis(url: str, max_connections: int | None = None, client_name: str | None = None) -> Redis:
    """A connection for worker-side processes that waits out a Redis outage instead of failing.

    Every command is retried with back-off until Redis answers again, so a job in flight pauses
    during an outage and carries on afterwards (and still calls back once), and the worker's own
    loop neither crashes nor needs a restart loop around it.

    Args:
        url: the Redis URL.
        max_connections: a cap on the connections of the process (a worker running many threads);
            a thread that finds them all in use waits for one instead of opening another.
        client_name: the name each connection gives itself (``CLIENT LIST`` shows it).
    """
    options: dict[str, Any] = {
        "retry": Retry(ExponentialBackoff(cap=5.0, base=0.2), retries=-1),
        "retry_on_error": [ConnectionError, TimeoutError],
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }
    if client_name:
        options["client_name"] = client_name
    if not max_connections:
        return Redis.from_url(url, **options)
    # No timeout: a command waits for a free connection rather than failing (jobs.worker explains
    # why the cap cannot deadlock).
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None, **options)
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


#: A worker's own connection, which the jobs it runs share (see ``share_connection``).
_worker_redis: Redis | None = None


def share_connection(redis: Redis) -> None:
    """Let the jobs of this process use the worker's connection: one connection pool per process.

    Hundreds of workers each holding a pool of their own for their jobs would cost Redis a few
    hundred connections more, and hosted Redis plans cap connections.
    """
    global _worker_redis
    _worker_redis = redis


def build_context(settings: Settings, redis: Redis | None = None) -> Context:
    """Assemble a context from settings: the backends ``CAPTION_BACKEND`` and ``VIDEO_BACKEND`` name.

    Args:
        settings: the configuration.
        redis: the connection to use; a new resilient one when not given.
    """
    redis = redis or resilient_redis(settings.redis_url)
    media = MediaStore(settings, redis)
    heavy = HeavySteps(settings.worker_heavy_steps)
    images = ImageSource(settings, media, heavy)
    api = ReplicateAPI(settings)

    def keep(url: str, name: str) -> str:
        """Copy a provider's video into the media store (once) and return our URL for it.

        The bytes stream from the provider into the store: never decoded, never whole in memory.
        """
        if media.exists(name):
            return media.url(name)
        try:
            # A video of up to VIDEO_MAX_BYTES on its way to the store: one of the heavy steps.
            with heavy.turn(), media.writer(name) as out:
                download(
                    url,
                    out,
                    max_bytes=VIDEO_MAX_BYTES,
                    timeout=(settings.http_connect_timeout, settings.http_read_timeout),
                    deadline=settings.video_download_deadline,
                    allowlist=settings.image_host_allowlist,
                    what="the provider's video",
                )
        except FetchError as exc:
            raise GenerationFailed(f"could not keep the provider's video: {exc}") from None
        return media.url(name)

    # The one place that maps CAPTION_BACKEND and VIDEO_BACKEND to implementations: past here,
    # the pipeline knows the backends only through their protocols.
    captioner: Captioner = {
        "replicate": lambda: ReplicateCaptioner(settings, api),
        "local": lambda: LocalCaptioner(settings, images),
    }[settings.caption_backend]()
    video: VideoBackend = {
        "pika": lambda: PikaClient(settings),
        "replicate": lambda: ReplicateVideo(settings, api, keep),
        "local": lambda: LocalVideo(settings, images, media),
    }[settings.video_backend]()
    store = RequestStore(redis, settings.record_ttl)
    return Context(
        settings=settings,
        redis=redis,
        store=store,
        queue=Queue(settings.queue_name, connection=redis),
        captioner=captioner,
        video=video,
        game=GameClient(settings),
        slots=VideoSlots(redis, video.max_concurrency(), lease=settings.job_timeout),
        media=media,
        heavy=heavy,
        # A cancel is seen within CANCEL_CHECK_INTERVAL, and within three polls when they come faster.
        waiting=WaitingRoom(store, min(CANCEL_CHECK_INTERVAL, 3 * settings.poll_interval)),
    )


#: The first jobs of a threaded worker start together: one of them builds the context, once.
_context_lock = threading.Lock()


def get_context() -> Context:
    """The process's context, from the environment (and `.env`), built once for all its threads."""
    with _context_lock:
        return _process_context()


@functools.cache
def _process_context() -> Context:
    return build_context(load_or_exit("worker"), _worker_redis)
