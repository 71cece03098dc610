"""The request list (``GET /api/v1/i2v``) and the status reply's caching headers, on a real Redis."""

from __future__ import annotations

import base64
import dataclasses
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from config import settings_from
from i2v_app import create_app
from jobs.identity import RequestIdentity
from jobs.store import OWNER_INDEX_PREFIX, RequestStore, owner_index_key
from tests.api import Api

KEY_A = "list-key-aaaaaaaaaaaaaaaa"
KEY_B = "list-key-bbbbbbbbbbbbbbbb"


def ids(body: dict) -> list[str]:
    return [item["request_id"] for item in body["requests"]]


def everything(client: FlaskClient, limit: int, **headers: str) -> list[str]:
    """Every request id, page by page."""
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/i2v", query_string=query, headers=headers).get_json()
        assert len(body["requests"]) <= limit
        seen += ids(body)
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("the cursor never ended")


def test_list_is_newest_first_and_pages_with_an_opaque_cursor(api: Api, client: FlaskClient) -> None:
    for n in range(5):
        api.submit(f"r-{n}", expect=202)
        time.sleep(0.002)  # apart by more than a millisecond: ties are ordered by key, not by arrival
    first = client.get("/api/v1/i2v", query_string={"limit": 2}).get_json()
    assert ids(first) == ["r-4", "r-3"]
    assert first["requests"][0]["status"] == "queued"
    assert first["requests"][0]["callback"]["history"] == []
    assert everything(client, 2) == ["r-4", "r-3", "r-2", "r-1", "r-0"]
    assert client.get("/api/v1/i2v").get_json()["next_cursor"] is None  # default limit 20 holds all five


def test_each_listed_request_has_the_eta_its_status_read_gives(app: Flask, api: Api, client: FlaskClient) -> None:
    """The page's queue positions are read in one round trip, and still per request."""
    # One thread per worker process, so that each request waits behind the one before it.
    app.extensions["i2v"]["settings"] = dataclasses.replace(app.extensions["i2v"]["settings"], worker_threads=1)
    for n in range(4):
        api.submit(f"q-{n}", expect=202)
    listed = {item["request_id"]: item["eta_seconds"] for item in client.get("/api/v1/i2v").get_json()["requests"]}
    alone = {f"q-{n}": client.get(f"/api/v1/i2v/q-{n}").get_json()["eta_seconds"] for n in range(4)}
    assert listed == alone
    assert len(set(alone.values())) > 1  # later requests wait behind earlier ones


def test_ties_in_creation_time_are_broken_stably_across_pages(api: Api, client: FlaskClient, redis: Redis) -> None:
    for n in range(7):
        api.submit(f"tie-{n}", expect=202)
    index = owner_index_key("")
    # Every request created in the same millisecond: only the record key orders them.
    redis.zadd(index, {member: 1_700_000_000_000 for member in redis.zrange(index, 0, -1)})
    expected = everything(client, 100)
    assert sorted(expected) == [f"tie-{n}" for n in range(7)]
    for limit in (1, 2, 3):
        assert everything(client, limit) == expected


def test_status_filter_and_bad_queries(api: Api, client: FlaskClient) -> None:
    api.submit("keep", expect=202)
    api.submit("gone", expect=202)
    assert client.delete("/api/v1/i2v/gone").status_code == 202
    assert ids(client.get("/api/v1/i2v?status=canceled").get_json()) == ["gone"]
    assert ids(client.get("/api/v1/i2v?status=queued").get_json()) == ["keep"]
    for query in ("status=lost", "limit=0", "limit=101", "limit=x", "cursor=%21%21", "cursor=" + "QQ" * 10):
        resp = client.get(f"/api/v1/i2v?{query}")
        assert resp.status_code == 422, query
        assert resp.mimetype == "application/problem+json"
    forged = base64.urlsafe_b64encode(b"12:" + b"z" * 40).decode()
    assert client.get(f"/api/v1/i2v?cursor={forged}").status_code == 422


def test_expired_records_drop_out_of_the_index(api: Api, client: FlaskClient, redis: Redis) -> None:
    for n in range(4):
        api.submit(f"e-{n}", expect=202)
    redis.delete(RequestIdentity("", "e-2").record_key, RequestIdentity("", "e-1").record_key)
    assert everything(client, 1) == ["e-3", "e-0"]
    assert redis.zcard(owner_index_key("")) == 2


def test_the_index_is_bounded_by_the_record_ttl(redis: Redis, settings) -> None:
    """An entry created more than RECORD_TTL ago is trimmed by the next create; the index expires too."""
    app = create_app(settings)
    client = app.test_client()
    api = Api(client)
    api.submit("old", expect=202)
    index = owner_index_key("")
    redis.zadd(index, {RequestIdentity("", "old").record_key: 1_000})  # created long ago
    api.submit("new", expect=202)
    assert redis.zrange(index, 0, -1) == [RequestIdentity("", "new").record_key.encode()]
    assert 0 < redis.ttl(index) <= settings.record_ttl


def test_each_key_lists_only_its_own_requests(service_env: dict[str, str]) -> None:
    app = create_app(settings_from({**service_env, "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": f"{KEY_A},{KEY_B}"}))
    client = app.test_client()
    api = Api(client)
    a, b = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
    api.submit("mine", key=KEY_A, expect=202)
    api.submit("theirs", key=KEY_B, expect=202)
    assert ids(client.get("/api/v1/i2v", headers=a).get_json()) == ["mine"]
    assert ids(client.get("/api/v1/i2v", headers=b).get_json()) == ["theirs"]
    assert client.get("/api/v1/i2v").status_code == 401


def test_list_never_scans(api: Api, client: FlaskClient, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    api.submit("one", expect=202)
    store: RequestStore = client.application.extensions["i2v"]["store"]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the list must read the owner's index, never SCAN")

    monkeypatch.setattr(store.redis, "scan_iter", refuse)
    monkeypatch.setattr(store.redis, "scan", refuse)
    monkeypatch.setattr(store.redis, "keys", refuse)
    assert ids(client.get("/api/v1/i2v").get_json()) == ["one"]
    assert redis.exists(OWNER_INDEX_PREFIX)


def test_reindex_adds_records_created_before_the_index(api: Api, client: FlaskClient, redis: Redis) -> None:
    for n in range(3):
        api.submit(f"old-{n}", expect=202)
    redis.delete(owner_index_key(""))  # as before the upgrade
    assert client.get("/api/v1/i2v").get_json()["requests"] == []
    result = client.application.test_cli_runner().invoke(args=["i2v", "reindex"])
    assert result.exit_code == 0, result.output
    assert "3" in result.output
    assert everything(client, 2) == ["old-2", "old-1", "old-0"]


# -- ETag ------------------------------------------------------------------------------------------


def test_status_has_a_weak_etag_over_the_stored_version_and_answers_304(api: Api, client: FlaskClient) -> None:
    api.submit("tagged", expect=202)
    first = client.get("/api/v1/i2v/tagged")
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    assert first.headers["Cache-Control"] == "private, no-cache"
    assert first.headers["Vary"] == "Authorization"
    # Reading again (the ETA is computed per read) keeps the tag.
    assert client.get("/api/v1/i2v/tagged").headers["ETag"] == etag
    unchanged = client.get("/api/v1/i2v/tagged", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.get_data() == b""
    assert unchanged.headers["ETag"] == etag
    assert unchanged.headers["Vary"] == "Authorization"
    # Any write of the record changes it.
    assert client.delete("/api/v1/i2v/tagged").status_code == 202
    changed = client.get("/api/v1/i2v/tagged", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_every_update_counts_the_version_up(api: Api, client: FlaskClient, redis: Redis, settings) -> None:
    """Two writes in one millisecond still change the ETag: the version is counted, not timed."""
    api.submit("v", expect=202)
    store = RequestStore(redis, settings.record_ttl)
    key = RequestIdentity("", "v").record_key
    tags = {client.get("/api/v1/i2v/v").headers["ETag"]}
    for progress in (10, 20):
        store.update(key, provider_progress=progress, updated_at="2026-01-01T00:00:00.000Z")
        redis.hset(key, "updated_at", "2026-01-01T00:00:00.000Z")
        tags.add(client.get("/api/v1/i2v/v").headers["ETag"])
    assert len(tags) == 3
    assert int(redis.hget(key, "version")) == 3
