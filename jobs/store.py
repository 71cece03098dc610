"""The request record store: one Redis hash per request, the single source of truth.

This is the only part of ``jobs`` the web process imports. Records are keyed by a digest of the
owner (the API key that created the request; empty without authentication) and the caller's
request id, so any id the caller chooses is safe as a key and an RQ job id. The pipeline writes
every provider id the moment it exists, which is what lets a restarted worker resume a request
instead of paying a provider twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis, WatchError
from redis.client import Pipeline
from rq import Callback, Queue, Retry
from rq.job import Job

#: Jobs are enqueued by dotted name so the web process never imports worker code.
PIPELINE_JOB = "jobs.pipeline.run_request"
PIPELINE_FAILURE_CALLBACK = "jobs.pipeline.on_job_failure"
DELIVERY_JOB = "jobs.delivery.deliver_callback"
#: RQ retries of a pipeline job after an unexpected exception or a dead worker; each resumes.
PIPELINE_RETRIES = 5

KEY_PREFIX = "i2v:req:"
TERMINAL = frozenset({"completed", "failed", "canceled"})
STAGES = ("captioning", "submitting", "waiting", "polling", "delivering")

_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'completed' or status == 'failed' or status == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_digest(owner: str, request_id: str) -> str:
    """A fixed-length, key-safe name for (owner, request id)."""
    return hashlib.sha256(f"{owner}\x00{request_id}".encode()).hexdigest()[:40]


def record_key(owner: str, request_id: str) -> str:
    """The Redis key of a request's record."""
    return KEY_PREFIX + request_digest(owner, request_id)


def job_id_for(owner: str, request_id: str) -> str:
    """The RQ job id of a request's pipeline job (RQ ids allow only ``[A-Za-z0-9_-]``)."""
    return "i2v-" + request_digest(owner, request_id)


@dataclass
class Record:
    """A request as stored. Empty strings in Redis read back as ``None``."""

    request_id: str
    image_url: str
    owner: str = ""
    status: str = "queued"
    stage: str | None = None
    prompt: str | None = None
    prediction_id: str | None = None
    provider: str = "pika"
    provider_job_id: str | None = None
    provider_progress: int | None = None
    video_url: str | None = None
    title: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    callback_url: str | None = None
    callback_status: str = "pending"
    callback_attempts: int = 0
    callback_last_status_code: int | None = None
    callback_next_attempt_at: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    #: Unix time of the Pika submission; deadlines run from it, also after a restart.
    submitted_at: float | None = None
    caption_started_at: float | None = None
    stages: dict[str, str] = field(default_factory=dict)
    cancel_requested: bool = False
    #: A provider create/submit was sent and its answer not yet saved (see the pipeline).
    caption_inflight: bool = False
    submit_inflight: bool = False

    _INTS = ("provider_progress", "callback_attempts", "callback_last_status_code")
    _FLOATS = ("submitted_at", "caption_started_at")
    _BOOLS = ("cancel_requested", "caption_inflight", "submit_inflight")

    @property
    def key(self) -> str:
        """The Redis key of this record."""
        return record_key(self.owner, self.request_id)

    @property
    def terminal(self) -> bool:
        """Whether the request has reached completed, failed or canceled."""
        return self.status in TERMINAL

    def to_redis(self) -> dict[str, str]:
        """The hash fields to write."""
        # Unset fields are left out so that set_if_absent (HSETNX) can claim them later.
        return {
            name: encode_field(name, value)
            for name, value in self.__dict__.items()
            if value is not None and value is not False
        }

    @classmethod
    def from_redis(cls, raw: dict[bytes | str, bytes | str]) -> Record:
        """Read a record from ``HGETALL`` output."""
        data = {_text(k): _text(v) for k, v in raw.items()}
        known = {name for name in cls.__dataclass_fields__}
        values: dict[str, Any] = {}
        for name, text in data.items():
            if name not in known:
                continue
            values[name] = decode_field(name, text)
        return cls(**values)


def encode_field(name: str, value: Any) -> str:
    """Encode one record field for a Redis hash."""
    if value is None:
        return ""
    if name == "stages":
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "1" if value else ""
    return str(value)


def decode_field(name: str, text: str) -> Any:
    """Decode one record field from a Redis hash."""
    if name == "stages":
        return json.loads(text) if text else {}
    if name in Record._BOOLS:
        return text == "1"
    if text == "":
        return None if name not in ("owner", "callback_status") else text
    if name in Record._INTS:
        return int(text)
    if name in Record._FLOATS:
        return float(text)
    return text


def enqueue_pipeline(queue: Queue, record: Record, job_timeout: int, pipeline: Pipeline) -> Job:
    """Enqueue the pipeline job of a record inside ``pipeline`` (a transaction in progress)."""
    return queue.enqueue_call(
        PIPELINE_JOB,
        args=(record.key,),
        job_id=job_id_for(record.owner, record.request_id),
        timeout=job_timeout,
        retry=Retry(max=PIPELINE_RETRIES),
        on_failure=Callback(PIPELINE_FAILURE_CALLBACK),
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"i2v request {record.request_id!r}",
        pipeline=pipeline,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RequestStore:
    """Reads and writes request records in Redis.

    Args:
        redis: the connection (any ``decode_responses`` setting).
        ttl: seconds a record is kept after its last write.
    """

    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._finish = redis.register_script(_FINISH)

    def create(self, record: Record, enqueue: Callable[[Pipeline], Any]) -> tuple[Record, bool]:
        """Store a new record and enqueue its job in one transaction, unless the id exists.

        Record and job are written together or not at all, so a crash between the two can never
        leave a request that no worker will run.

        Returns:
            The stored record and whether it was created now (False: it already existed).
        """
        key = record.key
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    existing = pipe.hgetall(key)
                    if existing:
                        return Record.from_redis(existing), False
                    pipe.multi()
                    pipe.hset(key, mapping=record.to_redis())
                    pipe.expire(key, self.ttl)
                    enqueue(pipe)
                    pipe.execute()
                    return record, True
                except WatchError:
                    continue

    def get(self, owner: str, request_id: str) -> Record | None:
        """The record of (owner, request id), or None."""
        return self.get_by_key(record_key(owner, request_id))

    def get_by_key(self, key: str) -> Record | None:
        """The record stored at ``key``, or None."""
        raw = self.redis.hgetall(key)
        return Record.from_redis(raw) if raw else None

    def update(self, key: str, **fields: Any) -> None:
        """Write some fields of a record and refresh its TTL."""
        mapping = {name: encode_field(name, value) for name, value in fields.items()}
        mapping["updated_at"] = now_iso()
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.ttl)
            pipe.execute()

    def enter_stage(self, record: Record, stage: str) -> None:
        """Mark ``stage`` as the record's current stage and note when it started."""
        record.stage = stage
        record.stages.setdefault(stage, now_iso())
        self.update(record.key, stage=stage, stages=record.stages, status="processing")
        record.status = "processing"

    def finish(self, key: str, status: str, **fields: Any) -> bool:
        """Move a record to a terminal status once; later calls change nothing.

        Returns:
            True for the one call that made the transition.
        """
        fields.update(status=status, updated_at=now_iso())
        argv: list[str] = []
        for name, value in fields.items():
            argv += [name, encode_field(name, value)]
        return self._finish(keys=[key], args=argv) == 1

    def set_if_absent(self, key: str, name: str, value: Any) -> bool:
        """Write one field only if it is not set yet (used for intent markers)."""
        return bool(self.redis.hsetnx(key, name, encode_field(name, value)))
