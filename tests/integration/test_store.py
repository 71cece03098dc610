"""The request store's one-round-trip create: RQ's own job, target claims, and a connection that recovers."""

from __future__ import annotations

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from jobs.identity import RequestIdentity
from jobs.states import TERMINAL, Status
from jobs.store import (
    PIPELINE_JOB,
    Record,
    RequestStore,
    TargetInUse,
    enqueue_pipeline,
    pipeline_job,
)

TIMESTAMPS = {b"created_at", b"enqueued_at"}


def create(store: RequestStore, queue: Queue, request_id: str) -> Record:
    record = Record(request_id=request_id, image_url="https://cdn.example.com/a.jpg", owner="key-1")
    outcome = store.create(record, pipeline_job(queue, record, 900), queue=queue, max_queued=100)
    assert outcome.created
    return record


def test_the_job_is_written_exactly_as_rq_enqueues_it(redis: Redis) -> None:
    queue, store = Queue("i2v", connection=redis), RequestStore(redis, 3600)
    record = create(store, queue, "same-as-rq")
    job_key = Job.key_for(record.identity.job_id)
    ours = redis.hgetall(job_key)
    ours_queued = redis.lrange(queue.key, 0, -1)
    assert redis.sismember(Queue.redis_queues_keys, queue.key)

    redis.flushdb()
    with redis.pipeline() as pipe:
        enqueue_pipeline(queue, record, 900, pipe)  # RQ's own Queue.enqueue_job
        pipe.execute()
    theirs = redis.hgetall(job_key)
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k not in TIMESTAMPS} == {
        k: v for k, v in theirs.items() if k not in TIMESTAMPS
    }
    assert ours_queued == redis.lrange(queue.key, 0, -1)
    assert redis.sismember(Queue.redis_queues_keys, queue.key)


def test_rq_reads_the_job_back(redis: Redis) -> None:
    queue, store = Queue("i2v", connection=redis), RequestStore(redis, 3600)
    record = create(store, queue, "read-back")
    job = Job.fetch(record.identity.job_id, connection=redis)
    assert job.func_name == PIPELINE_JOB
    assert job.args == (record.key,)
    assert job.get_status() == JobStatus.QUEUED
    assert job.retries_left == 5
    assert job.enqueued_at is not None
    assert queue.job_ids == [job.id]


def test_create_recovers_from_a_dropped_connection_and_flushed_scripts(redis: Redis) -> None:
    queue, store = Queue("i2v", connection=redis), RequestStore(redis, 3600)
    create(store, queue, "before")
    redis.script_flush()
    create(store, queue, "after-flush")
    redis.client_kill_filter(_type="normal", skipme=True)
    create(store, queue, "after-kill")
    assert len(queue) == 3


def test_a_repeated_id_writes_nothing(redis: Redis) -> None:
    queue, store = Queue("i2v", connection=redis), RequestStore(redis, 3600)
    record = create(store, queue, "twice")
    again = Record(request_id="twice", image_url="https://cdn.example.com/other.jpg", owner="key-1")
    outcome = store.create(again, pipeline_job(queue, again, 900), queue=queue, max_queued=100)
    assert not outcome.created
    assert outcome.record.image_url == record.image_url
    assert len(queue) == 1


def claimed(owner: str, request_id: str = "game-1") -> Record:
    target = "https://game.example/requests/game-1/callback"
    claim = RequestIdentity(owner, request_id).target_claim_key(target)
    return Record(request_id=request_id, image_url="https://cdn.example.com/a.jpg", owner=owner, target_claim=claim)


def test_a_target_claim_is_written_with_the_record_and_lives_as_long(redis: Redis) -> None:
    """The claim is taken atomically with the record, refused to another owner, and refreshed with the record."""
    queue, store = Queue("i2v", connection=redis), RequestStore(redis, 3600)
    mine = claimed("key-1")
    assert store.create(mine, pipeline_job(queue, mine, 900), queue=queue, max_queued=100).created
    assert redis.get(mine.target_claim) == mine.key.encode()
    theirs = claimed("key-2")
    with pytest.raises(TargetInUse):
        store.create(theirs, pipeline_job(queue, theirs, 900), queue=queue, max_queued=100)
    assert len(queue) == 1 and not redis.exists(theirs.key)

    redis.expire(mine.key, 50)
    redis.expire(mine.target_claim, 50)
    store.update(mine.key, stage="delivering")
    assert redis.ttl(mine.key) > 3000
    assert redis.ttl(mine.target_claim) > 3000


@pytest.mark.parametrize("status", list(Status))
def test_finish_moves_every_status_but_the_terminal_ones(redis: Redis, status: Status) -> None:
    """The finish script's list of terminal statuses is the declared one: an ended request never ends again."""
    store = RequestStore(redis, 3600)
    record = Record(request_id=f"finish-{status}", image_url="https://cdn.example.com/a.jpg", status=status)
    redis.hset(record.key, mapping=record.to_redis())
    moved = store.finish(record.key, Status.FAILED, error_code="internal_error")
    assert moved is (status not in TERMINAL)
    assert store.get_by_key(record.key).status == (status if status in TERMINAL else Status.FAILED)


def test_save_sets_the_record_in_hand_and_writes_it_in_one_call(redis: Redis) -> None:
    """The copy the pipeline holds and the stored one never disagree; a misspelt field writes nothing."""
    store = RequestStore(redis, 3600)
    record = Record(request_id="save-1", image_url="https://cdn.example.com/a.jpg")
    redis.hset(record.key, mapping=record.to_redis())
    store.save(record, prompt="a plane at dusk", provider_progress=40)
    assert (record.prompt, record.provider_progress) == ("a plane at dusk", 40)
    stored = store.get_by_key(record.key)
    assert (stored.prompt, stored.provider_progress) == ("a plane at dusk", 40)
    with pytest.raises(TypeError, match="promt"):
        store.save(record, promt="typo", prompt="never written")
    assert store.get_by_key(record.key).prompt == record.prompt == "a plane at dusk"
