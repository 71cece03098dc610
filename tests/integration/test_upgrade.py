"""Jobs and records written by an earlier release still run after an upgrade, under the same names.

Jobs wait in Redis across a deploy by dotted name and arguments, and receivers dedupe callbacks by
``webhook-id``: both are written here literally, as the release before :mod:`jobs.identity` made them.
"""

from __future__ import annotations

from rq import Queue

from jobs.store import Record, RequestStore
from tests.helpers import wait_for

PLAIN = "https://cdn.example.com/images/plane.jpg"


def test_jobs_enqueued_by_the_earlier_release_run_under_the_same_names(redis, settings, fakes, worker) -> None:
    """A queued pipeline job and a pending delivery job, by their old names and arguments, both finish."""
    queue, store = Queue(settings.queue_name, connection=redis), RequestStore(redis, settings.record_ttl)
    finished_key = "i2v:req:2440c8e218147edf7b9123dc7bc09765366e3ca5"
    queued_key = "i2v:req:7f1aa8a5946f14ffb83ae8c17258e1761bd068e0"
    finished = Record(request_id="upgrade-cb", image_url=PLAIN, status="failed", error_code="canceled")
    redis.hset(finished_key, mapping=finished.to_redis())
    redis.hset(queued_key, mapping=Record(request_id="upgrade-run", image_url=PLAIN).to_redis())
    queue.enqueue_call(
        "jobs.delivery.deliver_callback",
        args=(finished_key, 1),
        job_id="i2v-cb-2440c8e218147edf7b9123dc7bc09765366e3ca5-1",
    )
    queue.enqueue_call(
        "jobs.pipeline.run_request", args=(queued_key,), job_id="i2v-7f1aa8a5946f14ffb83ae8c17258e1761bd068e0"
    )

    def settled(key: str) -> Record | None:
        record = store.get_by_key(key)
        return record if record and record.callback_status != "pending" else None

    assert (
        wait_for(lambda: settled(finished_key), timeout=30, message="the old delivery job").callback_status
        == "delivered"
    )
    ran = wait_for(lambda: settled(queued_key), timeout=60, message="the old pipeline job")
    assert (ran.status, ran.callback_status) == ("completed", "delivered")
    (failed,) = fakes.game.callbacks_for("upgrade-cb")
    assert failed.headers["webhook-id"] == "msg_2440c8e218147edf7b9123dc7bc09765366e3ca5"
    (completed,) = fakes.game.callbacks_for("upgrade-run")
    assert completed.headers["webhook-id"] == "msg_7f1aa8a5946f14ffb83ae8c17258e1761bd068e0"
