"""Outbound HTTP honours the standard proxy variables, so operators can force egress through a proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.integration.test_pipeline import final_record, submit


class ForwardingProxy(ThreadingHTTPServer):
    """A plain HTTP forward proxy on 127.0.0.1 that records the absolute URLs it relays."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: ForwardingProxy

    def _relay(self) -> None:
        with self.server.lock:
            self.server.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
        upstream = requests.request(
            self.command, self.path, data=body, headers=headers, timeout=10, proxies={"http": "", "https": ""}
        )
        self.send_response(upstream.status_code)
        for name, value in upstream.headers.items():
            if name.lower() not in ("transfer-encoding", "connection", "content-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    do_GET = do_POST = _relay

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    server = ForwardingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_every_provider_call_goes_through_the_configured_proxy(client, fakes, start_process, proxy) -> None:
    """With HTTP_PROXY set, Replicate (httpx), Pika and GAME (requests) calls all pass the proxy."""
    fake_replicate, fake_pika, fake_game = fakes
    start_process("worker", HTTP_PROXY=proxy.url, http_proxy=proxy.url, NO_PROXY="", no_proxy="")
    submit(client, "proxied")
    assert final_record(client, "proxied")["status"] == "completed"
    seen = "\n".join(proxy.seen)
    assert f"POST {fake_replicate.url}/v1/predictions" in seen
    assert f"POST {fake_pika.base_url}/generate" in seen
    assert f"GET {fake_pika.base_url}/jobs/" in seen
    assert f"POST {fake_game.url}/requests/proxied/callback" in seen
