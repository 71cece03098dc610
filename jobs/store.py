"""The request record store: one Redis hash per request, the single source of truth.

The web process imports it (with the names and states it uses, :mod:`jobs.identity` and
:mod:`jobs.states`), never the pipeline. Records are keyed by the request's identity: the owner (the
API key that created the request; empty without authentication) and the caller's request id. The
pipeline writes every provider id the moment it exists, which is what lets a restarted worker
resume a request instead of paying a provider twice.

Two owners may use the same request id, but not at the same callback target: the record's create
also claims (callback URL, request id) for its record, and the claim expires with the record, so
no key can make the service call back, with the GAME key, for a request another key owns.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import quote

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError, NoScriptError
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from jobs.identity import KEY_PREFIX, RequestIdentity
from jobs.states import TERMINAL, CallbackStatus, Stage, Status, lua_is_one_of

#: Jobs are enqueued by dotted name so the web process never imports worker code.
PIPELINE_JOB = "jobs.pipeline.run_request"
PIPELINE_FAILURE_CALLBACK = "jobs.pipeline.on_job_failure"
DELIVERY_JOB = "jobs.delivery.deliver_callback"
#: RQ retries of a pipeline job after an unexpected exception or a dead worker; each resumes.
PIPELINE_RETRIES = 5

#: Records whose request or callback is not settled yet (sorted by creation): what the janitor checks.
ACTIVE_KEY = "i2v:active"
#: Prefix of an owner's index: a sorted set of its record keys scored by creation time in milliseconds.
OWNER_INDEX_PREFIX = "i2v:owner:"
#: Callback attempts a record keeps (the newest); older ones are dropped.
CALLBACK_HISTORY_KEEP = 20
#: Index entries one list page looks at, at most, when a status filter skips most of them.
LIST_SCAN_CAP = 1000

# Start delivery over after a callback ran out of retries: forget the attempts and their claims.
_RESET_CALLBACK = f"""
local fields = redis.call('HMGET', KEYS[1], 'status', 'callback_status')
if not fields[1] then return -1 end
if fields[2] ~= '{CallbackStatus.FAILED}' then return 0 end
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, 15) == 'callback_claim_' then redis.call('HDEL', KEYS[1], name) end
end
redis.call('HSET', KEYS[1], 'callback_status', '{CallbackStatus.PENDING}', 'callback_attempts', '0',
           'callback_next_attempt_at', ARGV[1], 'stage', '{Stage.DELIVERING}', 'updated_at', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1
"""

# Claim a step (a delivery attempt) unless someone claimed it recently; a stale claim is a dead owner's.
_CLAIM = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and tonumber(ARGV[2]) - tonumber(held) < tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Create a request: record, index entry, target claim and RQ job, or nothing. The job's hash is RQ's own
# (Job.to_dict); pushing its id on the queue list and naming the queue in rq:queues is what
# Queue.enqueue_job adds (a test holds the two equal).
# The target claim is taken here too, unless a live record of another owner holds it; a claim
# whose record is gone (expired) is stale and taken over.
# The record key also goes into its owner's index, scored by the creation time in milliseconds;
# entries created more than a record TTL ago are trimmed there, and the index expires with its
# newest entry's record.
# KEYS: record, active index, RQ queue list, RQ workers-by-queue set, RQ job hash, RQ queues set,
#       target claim ("" for none), owner index
# ARGV: max queued, record TTL, now, job id, n, <n record field/value parts>, <job field/value parts>
_CREATE = """
local existing = redis.call('HGETALL', KEYS[1])
if #existing > 0 then return {0, existing} end
if KEYS[7] ~= '' then
  local holder = redis.call('GET', KEYS[7])
  if holder and holder ~= KEYS[1] and redis.call('EXISTS', holder) == 1 then return {3} end
end
local depth = redis.call('LLEN', KEYS[3])
if depth >= tonumber(ARGV[1]) then return {2, depth} end
local n = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + n))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if KEYS[7] ~= '' then redis.call('SET', KEYS[7], KEYS[1], 'EX', ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
local ms = math.floor(tonumber(ARGV[3]) * 1000)
redis.call('ZADD', KEYS[8], string.format('%d', ms), KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', '(' .. string.format('%d', ms - tonumber(ARGV[2]) * 1000))
redis.call('EXPIRE', KEYS[8], ARGV[2])
redis.call('HSET', KEYS[5], unpack(ARGV, 6 + n, #ARGV))
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[6], KEYS[3])
return {1, depth, redis.call('SCARD', KEYS[4])}
"""

# Write fields of a record, count its version up, and refresh its TTL, and that of its target
# claim while it holds it. Every script that changes what a record shows counts the version up:
# the status reply's ETag is made from it.
# KEYS: record; ARGV: TTL, <field/value parts>
_UPDATE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
local claim = redis.call('HGET', KEYS[1], 'target_claim')
if claim and claim ~= '' and redis.call('GET', claim) == KEYS[1] then redis.call('EXPIRE', claim, ARGV[1]) end
return 1
"""

# Write a provider's progress into a record still in flight; a record that has ended keeps its own.
# Progress is written in batches (see jobs.waiting), so it may arrive after the request finished.
# KEYS: record; ARGV: TTL, updated_at, progress
_PROGRESS = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or {lua_is_one_of("status", TERMINAL)} then return 0 end
redis.call('HSET', KEYS[1], 'provider_progress', ARGV[3], 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Move a record to a terminal status unless it is in one already.
_FINISH = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if {lua_is_one_of("status", TERMINAL)} then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""


def now_iso() -> str:
    """The current UTC time as ISO-8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def callback_url(template: str, request_id: str) -> str:
    """The callback URL of a request: where it is called back, and the target it claims.

    A value holding ``{request_id}`` is a full template; any other value is the base to which
    ``/{request_id}/callback`` is appended (the original service's meaning). The id is
    percent-encoded as one path segment.

    Raises:
        ValueError: the id is empty or only dots, a dot-segment that would move the URL elsewhere
            (``..`` turns ``/requests/../callback`` into ``/callback``); submissions refuse such ids.
    """
    if not request_id.strip("."):
        raise ValueError(f"request id {request_id!r} cannot name a callback URL path segment")
    encoded = quote(request_id, safe="")
    if "{request_id}" in template:
        return template.replace("{request_id}", encoded)
    return f"{template.rstrip('/')}/{encoded}/callback"


def callback_target(template: str, record: Record) -> str:
    """Where a request is called back: its own ``callback_url``, else the one ``template`` builds."""
    return record.callback_url or callback_url(template, record.request_id)


class NotAdmitted(Exception):
    """A new request was refused (the backlog is full)."""


class TargetInUse(Exception):
    """A new request was refused: another owner's request has its id at the same callback target."""


@dataclass(frozen=True)
class Created:
    """What :meth:`RequestStore.create` did: the stored record, and for a new one its place in line."""

    record: Record
    created: bool
    #: Requests queued ahead of this one, and workers serving the queue (new requests only).
    ahead: int
    workers: int


@dataclass
class Record:
    """A request as stored. Empty strings in Redis read back as ``None``."""

    request_id: str
    image_url: str
    owner: str = ""
    status: str = Status.QUEUED
    stage: str | None = None
    prompt: str | None = None
    prediction_id: str | None = None
    provider: str = "pika"
    provider_job_id: str | None = None
    provider_progress: int | None = None
    video_url: str | None = None
    #: The video's media name, made once before the submission (older records have none).
    media_name: str | None = None
    title: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    callback_url: str | None = None
    callback_status: str = CallbackStatus.PENDING
    callback_attempts: int = 0
    callback_last_status_code: int | None = None
    callback_next_attempt_at: str | None = None
    #: The key of this request's claim on (callback URL, request id); see :meth:`RequestIdentity.target_claim_key`.
    target_claim: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    #: Unix time of the Pika submission; deadlines run from it, also after a restart.
    submitted_at: float | None = None
    caption_started_at: float | None = None
    stages: dict[str, str] = field(default_factory=dict)
    #: The callback's attempts, oldest first, at most CALLBACK_HISTORY_KEEP: ``{"at", "status_code", "error"}``.
    callback_history: list[dict[str, Any]] = field(default_factory=list)
    #: Counted up by every write (see ``_UPDATE``); with ``updated_at`` it makes the status ETag.
    version: int = 1
    cancel_requested: bool = False
    #: A provider create/submit was sent and its answer not yet saved (see the pipeline).
    caption_inflight: bool = False
    submit_inflight: bool = False

    _INTS = ("provider_progress", "callback_attempts", "callback_last_status_code", "version")
    _JSON = ("stages", "callback_history")
    _FLOATS = ("submitted_at", "caption_started_at")
    _BOOLS = ("cancel_requested", "caption_inflight", "submit_inflight")

    @cached_property
    def identity(self) -> RequestIdentity:
        """The request's identity, whose digest names its key and jobs (owner and id never change)."""
        return RequestIdentity(self.owner, self.request_id)

    @property
    def key(self) -> str:
        """The Redis key of this record."""
        return self.identity.record_key

    @property
    def terminal(self) -> bool:
        """Whether the request has reached completed, failed or canceled."""
        return self.status in TERMINAL

    def to_redis(self) -> dict[str, str]:
        """The hash fields to write."""
        # Unset fields are left out: absent and empty read back the same, and the hash stays small.
        values = ((name, getattr(self, name)) for name in self.__dataclass_fields__)
        return {name: encode_field(name, value) for name, value in values if value is not None and value is not False}

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
    if name in Record._JSON:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "1" if value else ""
    return str(value)


def decode_field(name: str, text: str) -> Any:
    """Decode one record field from a Redis hash."""
    if name in Record._JSON:
        return json.loads(text) if text else ({} if name == "stages" else [])
    if name in Record._BOOLS:
        return text == "1"
    if text == "":
        return None if name not in ("owner", "callback_status") else text
    if name in Record._INTS:
        return int(text)
    if name in Record._FLOATS:
        return float(text)
    return text


_PIPELINE_RETRY = Retry(max=PIPELINE_RETRIES)
_PIPELINE_ON_FAILURE = Callback(PIPELINE_FAILURE_CALLBACK)


def pipeline_job(queue: Queue, record: Record, job_timeout: int) -> Job:
    """The pipeline job of a record, made by RQ (``Job.create``), ready to be written as queued."""
    job = Job.create(
        PIPELINE_JOB,
        args=(record.key,),
        id=record.identity.job_id,
        timeout=job_timeout,
        retry=_PIPELINE_RETRY,
        on_failure=_PIPELINE_ON_FAILURE,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"i2v request {record.request_id!r}",
        origin=queue.name,
        status=JobStatus.QUEUED,
        connection=queue.connection,
    )
    job.enqueued_at = job.created_at
    return job


def enqueue_pipeline(queue: Queue, record: Record, job_timeout: int, pipeline: Pipeline) -> Job:
    """Add the pipeline job of a record to ``pipeline`` with RQ's own enqueue (for re-enqueueing)."""
    return queue.enqueue_job(pipeline_job(queue, record, job_timeout), pipeline=pipeline)


def enqueue_delivery(queue: Queue, identity: RequestIdentity, attempt: int = 1) -> Job:
    """Enqueue a callback delivery attempt at the front: a finished request should not wait in line."""
    return queue.enqueue_call(
        DELIVERY_JOB,
        args=(identity.record_key, attempt),
        job_id=identity.delivery_job_id(attempt),
        at_front=True,
        result_ttl=600,
    )


def owner_index_key(owner: str) -> str:
    """The Redis key of ``owner``'s index of requests (owners are key ids, or empty without authentication)."""
    return OWNER_INDEX_PREFIX + owner


#: A position in an owner's index: (creation time in ms, record key), the last entry a page looked at.
Position = tuple[int, str]


@dataclass(frozen=True)
class Page:
    """One page of an owner's requests, newest first, and where the next page starts (None: no more)."""

    records: list[Record]
    next_position: Position | None


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
        self._update = redis.register_script(_UPDATE)
        self._progress = redis.register_script(_PROGRESS)
        self._reset_callback = redis.register_script(_RESET_CALLBACK)
        self._claim = redis.register_script(_CLAIM)
        self._create = redis.register_script(_CREATE)
        self._own = threading.local()

    def create(self, record: Record, job: Job, *, queue: Queue, max_queued: int) -> Created:
        """Store a new record and enqueue its job atomically, in one round trip, unless the id exists.

        Record, index entry, target claim and job are written by one script, together or not at
        all, so no crash can leave a request that no worker will run, and a repeated id writes nothing.

        Args:
            record: the new request.
            job: its RQ job (see :func:`pipeline_job`), written as RQ's ``enqueue_job`` would.
            queue: the RQ queue the job goes to.
            max_queued: a new request is refused while this many wait (a repeat is always answered).

        Raises:
            NotAdmitted: the backlog is full.
            TargetInUse: another owner's live request claims ``record.target_claim``.
        """
        fields = [part for pair in record.to_redis().items() for part in pair]
        argv: list[Any] = [max_queued, self.ttl, time.time(), job.id, len(fields), *fields]
        for pair in job.to_dict().items():
            argv += pair
        keys = [record.key, ACTIVE_KEY, queue.key, WORKERS_BY_QUEUE_KEY % queue.name, job.key, Queue.redis_queues_keys]
        keys += [record.target_claim or "", owner_index_key(record.owner)]
        result = self._run_create(keys, argv)
        outcome = int(result[0])
        if outcome == 0:
            flat = result[1]
            return Created(Record.from_redis(dict(zip(flat[::2], flat[1::2], strict=True))), False, 0, 0)
        if outcome == 2:
            raise NotAdmitted(record.request_id)
        if outcome == 3:
            raise TargetInUse(record.request_id)
        return Created(record, True, int(result[1]), int(result[2]))

    def _run_create(self, keys: list[str], argv: list[Any]) -> list[Any]:
        """Run the create script on this thread's own connection: the submit path's one round trip.

        Submitting is the web process's hot path, and the connection pool's bookkeeping (fork
        and lock checks, a readiness poll) costs more than the command. A lost connection is
        opened again for another try: the script is idempotent, so a repeat after a lost reply
        finds the request it created. A timeout is not retried: the caller answers 503 at once.
        """
        own = getattr(self._own, "connection", None)
        if own is None or own.pid != os.getpid():
            pool = self.redis.connection_pool
            own = self._own.connection = pool.connection_class(**pool.connection_kwargs)
        tries = 3
        while True:
            tries -= 1
            try:
                own.send_command("EVALSHA", self._create.sha, len(keys), *keys, *argv)
                return own.read_response()
            except NoScriptError:
                if not tries:
                    raise
                self._create.sha = self.redis.script_load(_CREATE)  # Redis restarted or flushed its scripts
            except ConnectionError:
                own.disconnect()
                if not tries:
                    raise

    def get(self, owner: str, request_id: str) -> Record | None:
        """The record of (owner, request id), or None."""
        return self.get_by_key(RequestIdentity(owner, request_id).record_key)

    def get_by_key(self, key: str) -> Record | None:
        """The record stored at ``key``, or None."""
        raw = self.redis.hgetall(key)
        return Record.from_redis(raw) if raw else None

    def update(self, key: str, **fields: Any) -> None:
        """Write some fields of a record and refresh its TTL (and its target claim's, which lives as long)."""
        argv: list[Any] = [self.ttl]
        for name, value in {**fields, "updated_at": now_iso()}.items():
            argv += [name, encode_field(name, value)]
        self._update(keys=[key], args=argv)

    def save(self, record: Record, **fields: Any) -> None:
        """Set fields of ``record`` and write them, as :meth:`update` does: the copy in hand stays the stored one.

        Raises:
            TypeError: a name is not a field of a record.
        """
        unknown = fields.keys() - Record.__dataclass_fields__.keys()
        if unknown:
            raise TypeError(f"not fields of a record: {sorted(unknown)}")
        for name, value in fields.items():
            setattr(record, name, value)
        self.update(record.key, **fields)

    def write_progress(self, progress: dict[str, int]) -> None:
        """Write the provider progress of many records still in flight, in one round trip.

        Args:
            progress: record key -> progress (0-100); records that have ended are left as they are.
        """
        stamp = now_iso()
        with self.redis.pipeline(transaction=False) as pipe:
            for key, value in progress.items():
                self._progress(keys=[key], args=[self.ttl, stamp, value], client=pipe)
            pipe.execute()

    def canceled(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` the caller asked to cancel, read in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "cancel_requested")
            flags = pipe.execute()
        return {key for key, flag in zip(keys, flags, strict=True) if flag in (b"1", "1")}

    def enter_stage(self, record: Record, stage: Stage) -> None:
        """Mark ``stage`` as the record's current stage and note when it started."""
        stages = dict(record.stages)
        stages.setdefault(stage, now_iso())
        self.save(record, stage=stage, stages=stages, status=Status.PROCESSING)

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

    def cancel(self, record: Record) -> bool:
        """Mark an unfinished request canceled (the worker stops at its next step).

        Returns:
            False when the request had already finished.
        """
        stamp = now_iso()
        fields = {
            "cancel_requested": True,
            "status": Status.CANCELED,
            "error_code": "canceled",
            "error_message": "canceled by the caller",
            "stage": Stage.DELIVERING,
            "stages": {**record.stages, Stage.DELIVERING: stamp},
            "updated_at": stamp,
        }
        argv: list[str] = []
        for name, value in fields.items():
            argv += [name, encode_field(name, value)]
        return self._finish(keys=[record.key], args=argv) == 1

    def reset_callback(self, key: str) -> bool:
        """Make a callback that ran out of retries deliverable again.

        Returns:
            False unless the callback's status was ``failed``.
        """
        return self._reset_callback(keys=[key, ACTIVE_KEY], args=[now_iso(), time.time()]) == 1

    def list_owned(self, owner: str, *, limit: int, status: str | None = None, after: Position | None = None) -> Page:
        """``owner``'s requests, newest first (ties by record key, descending), from its index; never a SCAN.

        Entries whose record has expired are dropped from the index as they are met. With a
        ``status`` filter a page looks at no more than :data:`LIST_SCAN_CAP` entries, so it may
        hold fewer than ``limit`` records and still have a next position.

        Args:
            owner: whose requests.
            limit: records on the page, at least 1.
            status: only requests with this status.
            after: the position where the previous page stopped.
        """
        index = owner_index_key(owner)
        records: list[Record] = []
        stale: list[str] = []
        position = after
        looked = 0
        more = True
        while more and len(records) < limit and looked < LIST_SCAN_CAP:
            want = min(limit - len(records), LIST_SCAN_CAP - looked) + 1  # one extra tells if more follow
            entries = self._index_after(index, position, want)
            more = len(entries) == want
            with self.redis.pipeline(transaction=False) as pipe:
                for key, _ in entries:
                    pipe.hgetall(key)
                raws = pipe.execute()
            for (key, score), raw in zip(entries, raws, strict=True):
                if len(records) == limit or looked == LIST_SCAN_CAP:
                    more = True
                    break
                looked += 1
                position = (score, key)
                if not raw:
                    stale.append(key)
                    continue
                record = Record.from_redis(raw)
                if status is None or record.status == status:
                    records.append(record)
        if stale:
            self.redis.zrem(index, *stale)
        return Page(records, position if more else None)

    def reindex(self) -> int:
        """Add every stored record to its owner's index (records created before the index existed).

        A one-off after an upgrade (``flask i2v reindex``): it SCANs every record key, which the list
        itself never does. Entries already there are left as they are; returns how many were added.
        """
        added = 0
        for raw_key in self.redis.scan_iter(match=f"{KEY_PREFIX}*", count=500):
            key = _text(raw_key)
            owner, created = self.redis.hmget(key, "owner", "created_at")
            if created is None:
                continue  # expired meanwhile, or not a record
            try:
                when = datetime.fromisoformat(_text(created).replace("Z", "+00:00"))
            except ValueError:
                continue
            index = owner_index_key(_text(owner or b""))
            with self.redis.pipeline() as pipe:
                pipe.zadd(index, {key: int(when.timestamp() * 1000)}, nx=True)
                pipe.expire(index, self.ttl)
                new, _ = pipe.execute()
            added += int(new)
        return added

    def _index_after(self, index: str, after: Position | None, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` (record key, ms) entries of ``index`` after ``after``, newest first, in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            if after is None:
                pipe.zrevrangebyscore(index, "+inf", "-inf", start=0, num=count, withscores=True)
            else:
                score, key = after
                # Entries tied with the position come first (highest key first), then older ones.
                pipe.zrevrangebyscore(index, score, score, withscores=True)
                pipe.zrevrangebyscore(index, f"({score}", "-inf", start=0, num=count, withscores=True)
            replies = pipe.execute()
        entries = [(_text(member), int(ms)) for reply in replies for member, ms in reply]
        if after is not None:
            score, key = after
            entries = [(k, ms) for k, ms in entries if ms != score or k < key]
        return entries[:count]

    def settle(self, key: str) -> None:
        """Take a record whose callback is delivered or given up off the janitor's list."""
        self.redis.zrem(ACTIVE_KEY, key)

    def active(self, older_than: float) -> list[str]:
        """Keys of unsettled records created more than ``older_than`` seconds ago."""
        keys = self.redis.zrangebyscore(ACTIVE_KEY, "-inf", time.time() - older_than)
        return [_text(k) for k in keys]

    def claim(self, key: str, name: str, stale_after: float) -> bool:
        """Claim the step ``name`` of a record, unless it was claimed less than ``stale_after`` s ago.

        A claim older than that belongs to a process that died mid-step, so it may be taken over.
        """
        return self._claim(keys=[key], args=[name, time.time(), stale_after]) == 1
