"""Callbacks are safe to send: no redirect is followed, and the GAME key goes only where it belongs.

These run a real RQ worker (the Procfile's command) against the fake GAME receiver.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import Queue

from config import settings_from
from i2v_app import create_app
from jobs.store import Record, RequestStore, enqueue_delivery
from tests.api import PLAIN, Api
from tests.fakes import Fault
from tests.helpers import wait_for


class Sink:
    """Another origin that answers 200 to anything and records what reached it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, str]]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                sink.received.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_a_failed_attempt_and_nothing_follows_it(api, fakes, worker, sink, settings, status) -> None:
    """A 3xx from the receiver is retried like a 5xx with its code recorded; its Location sees nothing."""
    redirect = Fault(status=status, headers={"Location": f"{sink.url}/stolen"})
    fakes.game.add_fault("callback", redirect, times=None)
    api.submit(f"redirect-{status}", expect=202)
    record = api.settled(f"redirect-{status}", timeout=30)
    assert record["callback"]["status"] == "failed"
    assert record["callback"]["attempts"] == len(settings.callback_retry_delays) + 1
    assert record["callback"]["last_status_code"] == status
    assert sink.received == []
    assert fakes.game.callbacks == []


def test_a_redirect_then_a_2xx_is_delivered_on_the_retry(api, fakes, worker, sink) -> None:
    """One 307, then the receiver's 2xx: delivered on attempt 2, to GAME only."""
    fakes.game.add_fault("callback", Fault(status=307, headers={"Location": f"{sink.url}/stolen"}))
    api.submit("redirect-once", expect=202)
    record = api.settled("redirect-once", timeout=30)
    assert record["callback"]["status"] == "delivered"
    assert record["callback"]["attempts"] == 2
    assert len(fakes.game.callbacks_for("redirect-once")) == 1
    assert sink.received == []


def test_a_per_request_url_on_games_host_never_gets_the_game_key(service_env, fakes, worker) -> None:
    """``x-api-key`` goes only to the URL ``CALLBACK_API_URL`` builds for the request, not to any path on its host."""
    fakes.game.require_key = False
    allowed = {**service_env, "CALLBACK_URL_ALLOWLIST": f"127.0.0.1:{fakes.game.port}"}
    api = Api(create_app(settings_from(allowed)).test_client(), fakes.game)
    api.submit("mine", callback_url=f"{fakes.game.url}/hooks/someone-elses", expect=202)
    api.submit("own", expect=202)
    assert api.settled("mine", timeout=30)["callback"]["status"] == "delivered"
    assert api.settled("own", timeout=30)["callback"]["status"] == "delivered"
    (theirs,) = fakes.game.callbacks_for("someone-elses")
    assert "x-api-key" not in theirs.headers
    (own,) = fakes.game.callbacks_for("own")
    assert own.headers["x-api-key"] == service_env["GAME_API_KEY"]


def test_a_stored_dot_segment_id_is_never_called_back(redis, settings, fakes, worker) -> None:
    """A record from before ``..`` was refused: its callback fails at once, and nothing is sent anywhere."""
    store = RequestStore(redis, settings.record_ttl)
    record = Record(request_id="..", image_url=PLAIN, status="failed", error_code="canceled")
    redis.hset(record.key, mapping=record.to_redis())
    enqueue_delivery(Queue(settings.queue_name, connection=redis), record.identity)

    def given_up() -> Record | None:
        stored = store.get_by_key(record.key)
        return stored if stored and stored.callback_status == "failed" else None

    assert wait_for(given_up, timeout=20, message="the callback to be given up").callback_last_status_code is None
    assert fakes.game.requests == []


def test_another_key_cannot_make_a_failed_callback_for_a_taken_id(service_env, fakes, worker) -> None:
    """Key B submitting and canceling key A's GAME request id never reaches GAME: A's one callback stands."""
    secured = {**service_env, "I2V_AUTH_DISABLED": "0", "I2V_API_KEYS": "key-alpha-0123456789,key-bravo-0123456789"}
    api = Api(create_app(settings_from(secured)).test_client(), fakes.game)
    a, b = "key-alpha-0123456789", "key-bravo-0123456789"
    api.submit("game-7", key=a, expect=202)
    resp = api.submit("game-7", key=b)
    assert resp.status_code == 409
    assert resp.mimetype == "application/problem+json"
    assert api.cancel("game-7", key=b).status_code == 404
    assert api.settled("game-7", timeout=30, key=a)["callback"]["status"] == "delivered"
    (callback,) = fakes.game.callbacks_for("game-7")
    assert callback.status == "COMPLETED"
    assert fakes.game.rejected == []
