"""The Replicate client against the strict fake: a throttle gives only its "resets in" detail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config import settings_from
from jobs.clients.replicate import ReplicateAPI, ReplicateCaptioner
from jobs.errors import TransientError
from tests.fakes import FakeReplicate, Fault

TOKEN = "r8_unit_token_0123456789"
IMAGE = "https://cdn.example.com/images/plane.jpg"


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate(token=TOKEN, duration=0.05) as fake:
        yield fake


def captioner(fake: FakeReplicate) -> ReplicateCaptioner:
    settings = settings_from({"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": fake.url})
    return ReplicateCaptioner(settings, ReplicateAPI(settings))


def test_the_rate_limit_wait_comes_from_the_detail_when_no_retry_after_is_sent(fake: FakeReplicate) -> None:
    fake.create_limit = 1
    fake.limit_window = 40
    caption = captioner(fake)
    caption.create(IMAGE)

    with pytest.raises(TransientError) as excinfo:
        caption.create(IMAGE)

    assert excinfo.value.kind == "throttled"
    # The window has 40 s left, give or take the time the first create took.
    assert excinfo.value.retry_after is not None and 35 <= excinfo.value.retry_after <= 40
    throttled = fake.requests[-1]
    assert throttled.route == "create"
    assert len(fake.creates) == 1


def test_a_retry_after_header_wins_over_the_detail(fake: FakeReplicate) -> None:
    detail = "Request was throttled. Your rate limit resets in ~30s."
    body = {"type": "about:blank", "title": "Request was throttled", "status": 429, "detail": detail}
    fake.add_fault("create", Fault.throttled(retry_after=7, body=body))

    with pytest.raises(TransientError) as excinfo:
        captioner(fake).create(IMAGE)

    assert (excinfo.value.kind, excinfo.value.retry_after) == ("throttled", 7.0)
