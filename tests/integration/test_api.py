"""The HTTP API on a real Redis, no worker: replies, records, jobs, and the error shape."""

from __future__ import annotations

import pytest
from rq import Queue
from rq.job import Job

from jobs.identity import RequestIdentity
from jobs.store import PIPELINE_JOB

ESCAPED = "https:&#x2F;&#x2F;cdn.example.com&#x2F;images&#x2F;plane.jpg"
PLAIN = "https://cdn.example.com/images/plane.jpg"


def assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def test_submit_replies_202_with_location_and_enqueues_one_job_by_name(api, redis, settings) -> None:
    resp = api.submit("game:42.1", ESCAPED)
    assert resp.status_code == 202
    assert resp.get_json() == {
        "message": "Video generation pipeline initialized | ETA: 1-2 minutes",
        "request_id": "game:42.1",
    }
    assert resp.headers["Location"].endswith("/api/v1/i2v/game:42.1")
    queue = Queue(settings.queue_name, connection=redis)
    assert queue.job_ids == [RequestIdentity("", "game:42.1").job_id]
    job = Job.fetch(queue.job_ids[0], connection=redis)
    assert job.func_name == PIPELINE_JOB
    assert job.timeout == settings.job_timeout
    assert job.args == (RequestIdentity("", "game:42.1").record_key,)
    assert redis.hget(RequestIdentity("", "game:42.1").record_key, "image_url") == PLAIN.encode()


def test_eta_reflects_the_configured_timing(app, api) -> None:
    app.extensions["i2v"]["settings"] = app.extensions["i2v"]["settings"].__class__(
        initial_wait_time=300, max_check_time=420
    )
    assert api.submit().get_json()["message"] == "Video generation pipeline initialized | ETA: 6-13 minutes"


def test_same_id_and_image_again_is_200_with_status_and_enqueues_nothing(api, redis, settings) -> None:
    assert api.submit("dup", ESCAPED).status_code == 202
    again = api.submit("dup", PLAIN)
    assert again.status_code == 200
    assert again.get_json()["status"] == "queued"
    assert again.get_json()["request_id"] == "dup"
    assert len(Queue(settings.queue_name, connection=redis)) == 1


def test_same_id_with_another_image_is_409(api) -> None:
    api.submit("dup")
    body = assert_problem(api.submit("dup", "https://cdn.example.com/other.jpg"), 409)
    assert body["request_id"] == "dup"


def test_status_endpoint_returns_the_record(api) -> None:
    api.submit("s-1", ESCAPED)
    resp = api.status("s-1")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["request_id"] == "s-1"
    assert body["status"] == "queued"
    assert body["image_url"] == PLAIN
    assert body["provider"] == {"name": "pika", "job_id": None, "progress": None}
    assert body["callback"]["status"] == "pending"
    assert body["error"] is None


def test_unknown_request_is_404_problem(client, redis) -> None:
    assert_problem(client.get("/api/v1/i2v/nope"), 404)
    assert_problem(client.get("/api/v1/i2v/bad%20id"), 404)


@pytest.mark.parametrize(
    ("kwargs", "status", "mentions"),
    [
        ({"json": {"image_id": PLAIN}}, 422, "x-request-id"),
        ({"json": {"image_id": PLAIN}, "headers": {"x-request-id": ""}}, 422, "x-request-id"),
        ({"json": {"image_id": PLAIN}, "headers": {"x-request-id": "a b"}}, 422, "x-request-id"),
        ({"json": {"image_id": PLAIN}, "headers": {"x-request-id": "x" * 129}}, 422, "128"),
        ({"json": {}, "headers": {"x-request-id": "a"}}, 422, "image_id"),
        ({"json": {"image_id": "not a url"}, "headers": {"x-request-id": "a"}}, 422, "image_id"),
        ({"json": {"image_id": 42}, "headers": {"x-request-id": "a"}}, 422, "image_id"),
        ({"json": ["x"], "headers": {"x-request-id": "a"}}, 422, ""),
        (
            {"data": "{not json", "headers": {"x-request-id": "a", "Content-Type": "application/json"}},
            400,
            "JSON",
        ),
    ],
)
def test_client_errors_are_problem_json_naming_the_problem(client, redis, kwargs, status, mentions) -> None:
    body = assert_problem(client.post("/api/v1/i2v", **kwargs), status)
    assert mentions in body["detail"]


def test_wrong_method_and_unknown_path_are_problems(client) -> None:
    resp = client.put("/api/v1/i2v")
    assert_problem(resp, 405)
    assert "POST" in resp.headers["Allow"]
    assert_problem(client.get("/nowhere"), 404)


def test_redis_down_is_503_problem_not_500(settings) -> None:
    from config import Settings
    from i2v_app import create_app

    dead = create_app(Settings(redis_url="redis://127.0.0.1:1/0", auth_disabled=True))
    resp = dead.test_client().post("/api/v1/i2v", json={"image_id": PLAIN}, headers={"x-request-id": "r"})
    body = assert_problem(resp, 503)
    assert resp.headers["Retry-After"]
    assert body["request_id"] == "r"


def test_index_lists_endpoints(client) -> None:
    body = client.get("/").get_json()
    assert body["name"] == "i2v"
    assert body["version"]
    assert body["description"]
    paths = {e["path"] for e in body["endpoints"]}
    assert {"/api/v1/i2v", "/openapi.json", "/docs", "/redoc", "/healthz", "/readyz", "/metrics"} <= paths
    # The list cannot drift from the routes: every plain GET it names is served.
    for endpoint in body["endpoints"]:
        if endpoint["method"] == "GET" and "{" not in endpoint["path"]:
            assert client.get(endpoint["path"]).status_code != 404, endpoint


def test_healthz(client) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_docs_work_offline_and_redoc_uses_the_setting(client, settings) -> None:
    spec = client.get("/openapi.json").get_json()
    assert "/api/v1/i2v" in spec["paths"]
    assert "/api/v1/i2v/{request_id}" in spec["paths"]
    params = spec["paths"]["/api/v1/i2v"]["post"]["parameters"]
    assert any(p["name"] == "x-request-id" and p["in"] == "header" for p in params)
    page = client.get("/docs").get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in page
    assert "//" not in page.split("swagger-ui-bundle.js")[0].rsplit('src="', 1)[1]  # served locally
    asset = client.get("/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000
    assert settings.redoc_js_url in client.get("/redoc").get_data(as_text=True)
