"""Shared machinery of the HTTP fakes: a threaded local server, request recording and fault injection.

A fake runs in a background thread of the test process, while the service under test may reach it
from other processes over HTTP, so every piece of state lives on the fake object behind its lock.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

T = TypeVar("T")

Body = bytes | str | dict[str, Any] | list[Any] | None
MalformedKind = Literal["invalid_json", "wrong_shape"]

ANY_ROUTE = "*"


class Headers(dict[str, str]):
    """Header values keyed by lower-cased name, so lookups ignore case."""

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            lowered = key.lower()
            # Repeated headers are folded the way HTTP allows: one comma-separated value.
            if super().__contains__(lowered):
                value = f"{super().__getitem__(lowered)}, {value}"
            super().__setitem__(lowered, value)

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        """Case-insensitive ``dict.get``."""
        return super().get(key.lower(), default)


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    json: Any
    at: float
    route: str | None


@dataclass
class Fault:
    """A misbehaviour to play instead of (or before) the normal answer.

    Attributes:
        status: answer with this status (and ``body``/``headers``) instead of handling the request.
        body: body of a status answer or of a malformed answer; a dict or list is sent as JSON.
            ``None`` lets the fake pick its usual error body for that status.
        headers: extra headers of the answer, e.g. ``{"Retry-After": "1"}``.
        delay: seconds to wait before answering (normally, or per the other fields).
        malformed: answer 200 with a body that is not valid JSON (``"invalid_json"``) or valid JSON
            of the wrong shape (``"wrong_shape"``).
        reset: read the request, then drop the connection without any reply.
    """

    status: int | None = None
    body: Body = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    malformed: MalformedKind | None = None
    reset: bool = False

    def __post_init__(self) -> None:
        if self.malformed not in (None, "invalid_json", "wrong_shape"):
            raise ValueError(f"unknown malformed kind {self.malformed!r}")
        if self.status is not None and (self.malformed or self.reset):
            raise ValueError("a fault answers with a status, a malformed body or a reset, not several")

    @classmethod
    def error(cls, status: int, body: Body = None, retry_after: float | str | None = None) -> Fault:
        """An error status, optionally with ``Retry-After``."""
        headers = {} if retry_after is None else {"Retry-After": _retry_after_value(retry_after)}
        return cls(status=status, body=body, headers=headers)

    @classmethod
    def throttled(cls, retry_after: float | str | None = 1, status: int = 429, body: Body = None) -> Fault:
        """A 429 (or 503) with ``Retry-After``."""
        return cls.error(status, body=body, retry_after=retry_after)

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Answer normally, but only after ``delay`` seconds."""
        return cls(delay=delay)

    @classmethod
    def connection_reset(cls, delay: float = 0.0) -> Fault:
        """Drop the connection after reading the request."""
        return cls(reset=True, delay=delay)

    @classmethod
    def garbage(cls, kind: MalformedKind = "invalid_json", body: Body = None) -> Fault:
        """A 200 whose body is not what the client expects."""
        return cls(malformed=kind, body=body)


@dataclass
class Response:
    """An answer the fake sends."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """A named endpoint: method, path pattern and handler."""

    name: str
    method: str
    pattern: re.Pattern[str]
    handler: Handler


Handler = Callable[[Recorded, re.Match[str]], Response]


def route(name: str, method: str, pattern: str, handler: Handler) -> Route:
    """Build a :class:`Route` whose pattern must match the whole path."""
    return Route(name, method.upper(), re.compile(f"^{pattern}$"), handler)


def json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(
        status,
        json.dumps(obj).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def encode_body(body: Body) -> tuple[bytes, str]:
    """The bytes and content type of a fault body."""
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


def reason(status: int) -> str:
    """The standard reason phrase of a status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def iso(ts: float) -> str:
    """A UTC timestamp in the ``2024-01-01T00:00:00.000000Z`` form the providers use."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def _retry_after_value(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.open_connections: set[socket.socket] = set()
        self.aborted: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.open_connections.discard(request)
            aborted = request in self.aborted
            self.aborted.discard(request)
        if aborted:
            # No FIN first: with SO_LINGER 0 a plain close sends a TCP reset.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (timeouts, resets) are part of the tests; stay quiet about them.
        pass

    def close_all_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus delayed ACKs
        # add ~40 ms to every answer on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        """The request body, whether sized by Content-Length or sent chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer section ends with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def abort(self) -> None:
        """Drop the connection with a TCP reset and no reply."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self.server.conn_lock:
            self.server.aborted.add(self.connection)
        self.close_connection = True

    def send(self, resp: Response) -> None:
        """Write a complete answer (always sized, so keep-alive works)."""
        try:
            self.send_response(resp.status)
            headers = Headers(resp.headers)
            headers.setdefault("content-type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
            self.wfile.flush()
        except OSError:
            # The client went away (it timed out or was reset); nothing left to do.
            self.close_connection = True


class FakeServer:
    """Base of the fakes: a real HTTP server on 127.0.0.1 with named routes.

    Subclasses implement :meth:`routes` and may override :meth:`authorized`,
    :meth:`unauthorized_response`, :meth:`admit`, :meth:`error_response`, :meth:`fault_response`,
    :meth:`malformed_response` and :meth:`reset_state`.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._requests: list[Recorded] = []
        self._faults: list[list[Any]] = []  # [route, fault, remaining times or None]
        self._flaky: list[tuple[str, Fault, float]] = []  # [route, fault, probability]
        self._flaky_rng = random.Random(0)
        self._errors: list[str] = []
        self._server: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._routes = self.routes()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; delayed answers are abandoned."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (still known after :meth:`stop`, so recorded state stays readable)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running fake."""
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget recorded requests, pending faults and all state; restore the configuration."""
        with self.lock:
            self._requests.clear()
            self._faults.clear()
            self._flaky.clear()
            self._errors.clear()
            self.reset_state()

    # -- what tests read -------------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far (faulted, rejected and unknown ones too), oldest first."""
        with self.lock:
            return list(self._requests)

    def requests_for(self, route_name: str) -> list[Recorded]:
        """The recorded requests that matched the named route."""
        with self.lock:
            return [r for r in self._requests if r.route == route_name]

    @property
    def errors(self) -> list[str]:
        """Tracebacks of exceptions raised inside the fake itself (should stay empty)."""
        with self.lock:
            return list(self._errors)

    # -- faults ----------------------------------------------------------------------------------

    def add_fault(self, route_name: str, fault: Fault, times: int | None = 1) -> None:
        """Play ``fault`` on the next ``times`` requests of a route (``None``: until reset).

        Faults of a route are used in the order added. ``"*"`` matches every route.
        """
        if route_name != ANY_ROUTE and route_name not in {r.name for r in self._routes}:
            raise ValueError(f"unknown route {route_name!r}; known: {sorted({r.name for r in self._routes})}")
        if times is not None and times < 1:
            raise ValueError("times must be positive or None")
        with self.lock:
            self._faults.append([route_name, fault, times])

    def add_flaky_fault(self, route_name: str, fault: Fault, probability: float, seed: int | None = None) -> None:
        """Play ``fault`` on each request of a route with ``probability``, until reset.

        Counted faults (:meth:`add_fault`) come first. The draws come from one random generator per
        fake; ``seed`` restarts it, so a run with the same order of requests meets the same faults.
        """
        if route_name != ANY_ROUTE and route_name not in {r.name for r in self._routes}:
            raise ValueError(f"unknown route {route_name!r}; known: {sorted({r.name for r in self._routes})}")
        if not 0 <= probability <= 1:
            raise ValueError("probability must be between 0 and 1")
        with self.lock:
            if seed is not None:
                self._flaky_rng.seed(seed)
            self._flaky.append((route_name, fault, probability))

    def clear_faults(self) -> None:
        """Drop pending faults, flaky ones too."""
        with self.lock:
            self._faults.clear()
            self._flaky.clear()

    def _take_fault(self, route_name: str | None) -> Fault | None:
        with self.lock:
            for entry in self._faults:
                name, fault, remaining = entry
                if name in (ANY_ROUTE, route_name):
                    if remaining is not None:
                        entry[2] = remaining - 1
                        if entry[2] == 0:
                            self._faults.remove(entry)
                    return fault
            for name, fault, probability in self._flaky:
                if name in (ANY_ROUTE, route_name) and self._flaky_rng.random() < probability:
                    return fault
        return None

    # -- hooks for subclasses --------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The endpoints of this fake."""
        raise NotImplementedError

    def authorized(self, req: Recorded) -> bool:
        """Whether the request carries the expected credential."""
        return True

    def unauthorized_response(self, req: Recorded) -> Response:
        """The answer to a request with a wrong or missing credential."""
        return self.error_response(401, "Unauthorized")

    def admit(self, req: Recorded, route_name: str) -> Response | None:
        """An answer that refuses an authorized request before its handler runs (a rate limit), or None."""
        return None

    def error_response(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
        """An error answer in this provider's style."""
        return json_response(status, {"error": detail}, headers)

    def fault_response(self, route_name: str | None, fault: Fault) -> Response:
        """The answer of a status fault; ``fault.body`` None means the usual error body."""
        assert fault.status is not None
        if fault.body is None:
            resp = self.error_response(fault.status, reason(fault.status))
            resp.headers.update(fault.headers)
            return resp
        body, content_type = encode_body(fault.body)
        return Response(fault.status, body, {"Content-Type": content_type, **fault.headers})

    def malformed_response(self, route_name: str | None, fault: Fault) -> Response:
        """A 200 whose body is invalid JSON or JSON of the wrong shape."""
        if fault.body is not None:
            body, _ = encode_body(fault.body)
        elif fault.malformed == "invalid_json":
            body = b'{"id": "truncated", "status": '
        else:
            body = json.dumps({"unexpected": "shape", "items": []}).encode()
        return Response(200, body, {"Content-Type": "application/json", **fault.headers})

    def reset_state(self) -> None:
        """Clear provider state and restore the configuration given at construction."""

    # -- serving ---------------------------------------------------------------------------------

    def _match(self, method: str, path: str) -> tuple[Route | None, re.Match[str] | None, bool]:
        path_known = False
        for r in self._routes:
            m = r.pattern.match(path)
            if m:
                path_known = True
                if r.method == method:
                    return r, m, True
        return None, None, path_known

    def _serve(self, h: _Handler) -> None:
        try:
            body = h.read_body()
        except (OSError, ValueError):
            h.close_connection = True
            return
        split = urlsplit(h.path)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        matched, match, path_known = self._match(h.command, split.path)
        rec = Recorded(
            method=h.command,
            path=split.path,
            query=dict(parse_qsl(split.query)),
            headers=Headers(h.headers.items()),
            body=body,
            json=parsed,
            at=time.time(),
            route=matched.name if matched else None,
        )
        with self.lock:
            self._requests.append(rec)

        fault = self._take_fault(rec.route)
        resp: Response | None = None
        if fault is not None:
            if fault.delay > 0 and self._stopping.wait(fault.delay):
                h.abort()
                return
            if fault.reset:
                h.abort()
                return
            if fault.status is not None:
                resp = self.fault_response(rec.route, fault)
            elif fault.malformed is not None:
                resp = self.malformed_response(rec.route, fault)

        if resp is None:
            resp = self._handle(rec, matched, match, path_known)
        h.send(resp)

    def _handle(
        self,
        rec: Recorded,
        matched: Route | None,
        match: re.Match[str] | None,
        path_known: bool,
    ) -> Response:
        if matched is None or match is None:
            if path_known:
                return self.error_response(405, "Method Not Allowed")
            return self.error_response(404, "Not Found")
        if not self.authorized(rec):
            return self.unauthorized_response(rec)
        refused = self.admit(rec, matched.name)
        if refused is not None:
            return refused
        try:
            return matched.handler(rec, match)
        except Exception:  # a bug in a fake must show up as a 500 and in .errors
            with self.lock:
                self._errors.append(traceback.format_exc())
            return self.error_response(500, "Internal Server Error (fake)")


def is_json_content_type(req: Recorded) -> bool:
    """Whether the request says its body is JSON (``application/json`` or an ``application/*+json`` type)."""
    media_type = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def bearer_token(req: Recorded) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    value = req.headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
