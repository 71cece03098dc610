"""The callback's history: every delivery attempt in the record and the status reply, bounded."""

from __future__ import annotations

import re

from jobs.delivery import with_attempt
from jobs.store import CALLBACK_HISTORY_KEEP, Record
from tests.api import Api
from tests.fakes import Fakes, Fault
from tests.helpers import ServiceProcess

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_each_attempt_is_kept_oldest_first_with_its_status_code(api: Api, fakes: Fakes, worker: ServiceProcess) -> None:
    fakes.game.add_fault("callback", Fault.error(503), times=2)
    api.submit("h-1", expect=202)
    record = api.settled("h-1")
    history = record["callback"]["history"]
    assert [entry["status_code"] for entry in history] == [503, 503, 200]
    assert [entry["error"] for entry in history] == [None, None, None]
    assert all(ISO.fullmatch(entry["at"]) for entry in history)
    assert [entry["at"] for entry in history] == sorted(entry["at"] for entry in history)
    assert record["callback"]["attempts"] == 3


def test_an_attempt_without_an_answer_says_why(api: Api, fakes: Fakes, worker: ServiceProcess) -> None:
    fakes.game.add_fault("callback", Fault.connection_reset())
    api.submit("h-2", expect=202)
    history = api.settled("h-2")["callback"]["history"]
    assert history[0]["status_code"] is None
    assert history[0]["error"]
    assert history[-1]["status_code"] == 200


def test_a_redelivery_adds_to_the_history(api: Api, fakes: Fakes, worker: ServiceProcess) -> None:
    fakes.game.add_fault("callback", Fault.error(410))  # gone: fails the callback at once
    api.submit("h-3", expect=202)
    record = api.settled("h-3")
    assert record["callback"]["status"] == "failed"
    assert [entry["status_code"] for entry in record["callback"]["history"]] == [410]
    assert api.redeliver("h-3").status_code == 202
    record = api.settled("h-3")
    assert record["callback"]["status"] == "delivered"
    assert [entry["status_code"] for entry in record["callback"]["history"]] == [410, 200]


def test_the_history_keeps_only_the_newest_attempts() -> None:
    record = Record(request_id="r", image_url="https://x.io/a.png")
    for n in range(CALLBACK_HISTORY_KEEP + 5):
        record.callback_history = with_attempt(record, f"2026-01-01T00:00:{n:02d}.000Z", 500 + n, None)
    assert len(record.callback_history) == CALLBACK_HISTORY_KEEP
    assert record.callback_history[0]["status_code"] == 505
    assert record.callback_history[-1]["status_code"] == 500 + CALLBACK_HISTORY_KEEP + 4


def test_the_spec_documents_the_history(api: Api) -> None:
    schemas = api.client.get("/openapi.json").get_json()["components"]["schemas"]
    assert "history" in schemas["CallbackInfo"]["properties"]
    assert set(schemas["CallbackAttempt"]["properties"]) == {"at", "status_code", "error"}
    api.submit("h-4", expect=202)
    assert api.record("h-4")["callback"]["history"] == []
