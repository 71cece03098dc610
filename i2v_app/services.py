"""Access to what the app factory attached: settings, Redis, the queue and the record store."""

from __future__ import annotations

from flask import current_app
from redis import Redis
from rq import Queue
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from config import Settings
from jobs.states import Status
from jobs.store import Record, RequestStore


def settings() -> Settings:
    """The app's settings."""
    return current_app.extensions["i2v"]["settings"]


def redis() -> Redis:
    """The app's Redis connection."""
    return current_app.extensions["i2v"]["redis"]


def queue() -> Queue:
    """The queue pipeline jobs go to."""
    return current_app.extensions["i2v"]["queue"]


def store() -> RequestStore:
    """The request record store."""
    return current_app.extensions["i2v"]["store"]


def queue_load(record: Record) -> tuple[int, int]:
    """(requests ahead of this one in the queue, workers serving the queue), in one round trip."""
    q = queue()
    with redis().pipeline(transaction=False) as pipe:
        pipe.lpos(q.key, record.identity.job_id)
        pipe.scard(WORKERS_BY_QUEUE_KEY % q.name)
        position, workers = pipe.execute()
    return (position if position is not None else 0), int(workers)


def queue_loads(records: list[Record]) -> dict[str, tuple[int, int]]:
    """:func:`queue_load` of each queued record among ``records``, by record key, in one round trip."""
    queued = [record for record in records if record.status == Status.QUEUED]
    if not queued:
        return {}
    q = queue()
    with redis().pipeline(transaction=False) as pipe:
        for record in queued:
            pipe.lpos(q.key, record.identity.job_id)
        pipe.scard(WORKERS_BY_QUEUE_KEY % q.name)
        *positions, workers = pipe.execute()
    return {
        record.key: ((position if position is not None else 0), int(workers))
        for record, position in zip(queued, positions, strict=True)
    }
