"""What can be done to a request, shared by the HTTP API and the flask CLI."""

from __future__ import annotations

import contextlib

from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from i2v_app import services
from jobs.store import (
    Created,
    NotAdmitted,
    Record,
    TargetInUse,
    callback_target,
    enqueue_delivery,
    pipeline_job,
)


class Conflict(Exception):
    """The request is not in a state that allows this."""


class Backlogged(Exception):
    """``MAX_QUEUED`` requests are already waiting."""


class InUse(Exception):
    """Another key's request has this request id at the same callback target."""


def submit(record: Record) -> Created:
    """Store a new request and enqueue its job, or return the one stored under its id.

    A repeat of a known id is always answered; a new one is refused while ``MAX_QUEUED``
    requests wait, rather than queueing work no one would see for hours. A request claims its
    (callback URL, request id) for as long as its record lives, so that no other key can have the
    service call back for that id at that URL (where the GAME key would vouch for it).

    Raises:
        Backlogged: the queue is full.
        InUse: another key's request holds the same request id at the same callback URL.
    """
    settings, queue = services.settings(), services.queue()
    record.provider = settings.video_backend
    target = callback_target(settings.callback_api_url, record)
    record.target_claim = record.identity.target_claim_key(target)
    job = pipeline_job(queue, record, settings.job_timeout)
    try:
        return services.store().create(record, job, queue=queue, max_queued=settings.max_queued)
    except NotAdmitted:
        raise Backlogged(f"{settings.max_queued} requests are already waiting; try again later") from None
    except TargetInUse:
        raise InUse(f"Request id {record.request_id!r} is already in use at this callback URL") from None


def cancel(record: Record) -> Record:
    """Cancel a request: a queued one never runs, a running one stops at its next step.

    Exactly one FAILED callback follows.

    Raises:
        Conflict: the request had already finished.
    """
    store = services.store()
    if not store.cancel(record):
        raise Conflict(f"request {record.request_id!r} has already finished ({record.status})")
    with contextlib.suppress(NoSuchJobError):
        job = Job.fetch(record.identity.job_id, connection=services.redis())
        if job.get_status() in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            job.cancel()
    enqueue_delivery(services.queue(), record.identity)
    return store.get_by_key(record.key) or record


def redeliver(record: Record) -> Record:
    """Send a callback again after it ran out of retries (same ``webhook-id``).

    Raises:
        Conflict: the callback is pending or was delivered.
    """
    store = services.store()
    if not store.reset_callback(record.key):
        raise Conflict(f"the callback of {record.request_id!r} is {record.callback_status}, not failed")
    enqueue_delivery(services.queue(), record.identity)
    return store.get_by_key(record.key) or record
