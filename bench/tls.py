"""HTTPS for the bench's fake Pika: a private CA, a CA bundle set up like a corporate one, handshake counts.

In production every Pika poll goes over TLS, and a worker that opens a new connection per poll pays
a handshake each time. So the bench serves its fake Pika over HTTPS with a certificate from a CA of
its own (``trustme``), and hands the service that CA the way a company hands its CA to every
program: a bundle file (the public roots plus its own CA) named by ``REQUESTS_CA_BUNDLE``, which
requests, the service's urllib3 pools and its libcurl poll pool read (``jobs/clients/http.py``),
and ``SSL_CERT_FILE``, which httpx and the ``ssl`` module read. The server counts connections,
completed handshakes and resumed sessions, so the results can say what each poll cost in TLS.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import trustme

from tests.fakes import FakePika


@dataclass
class TLSCounts:
    """What the HTTPS server saw: connections accepted, handshakes completed or failed, sessions resumed."""

    connections: int = 0
    handshakes: int = 0
    resumed: int = 0
    failed: int = 0


class PrivateCA:
    """A CA of this run, a server certificate for 127.0.0.1 and a corporate-style bundle file.

    Args:
        directory: where the bundle file is written.
    """

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA(organization_name="i2v bench CA")
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        directory.mkdir(parents=True, exist_ok=True)
        self.bundle = directory / "ca-bundle.pem"
        # The public roots plus the private CA, as a corporate bundle is built: loading it costs what
        # loading a real one costs, and public hosts still verify.
        self.bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + self.ca.cert_pem.bytes())

    def env(self) -> dict[str, str]:
        """The variables a deployment sets for a corporate CA bundle."""
        return {"REQUESTS_CA_BUNDLE": str(self.bundle), "SSL_CERT_FILE": str(self.bundle)}

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the certificate for 127.0.0.1 (session tickets on, as by default)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_cert.configure_cert(context)
        return context


class HTTPSFakePika(FakePika):
    """The fake Pika of the tests, served over HTTPS, counting handshakes.

    The TLS handshake runs in the connection's own server thread (never in the accepting thread, so
    one slow client does not hold up the others).

    Args:
        ca: the CA whose certificate the server presents.
        **kwargs: as for FakePika.
    """

    def __init__(self, ca: PrivateCA, **kwargs: Any) -> None:
        self._context = ca.server_context()
        self._counts = TLSCounts()
        self._counts_lock = threading.Lock()
        super().__init__(**kwargs)

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` of the running fake."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def tls(self) -> TLSCounts:
        """A copy of the counts so far."""
        with self._counts_lock:
            return TLSCounts(**vars(self._counts))

    def reset_tls(self) -> None:
        """Start counting again from zero."""
        with self._counts_lock:
            self._counts = TLSCounts()

    def start(self) -> HTTPSFakePika:
        """Serve as the plain fake does, with every accepted connection wrapped in TLS."""
        super().start()
        server = self._server
        assert server is not None
        accept = server.get_request
        handle = server.finish_request

        def get_request() -> tuple[socket.socket, Any]:
            sock, address = accept()
            with self._counts_lock:
                self._counts.connections += 1
            return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

        def finish_request(request: ssl.SSLSocket, address: Any) -> None:
            # Runs in the connection's thread (ThreadingMixIn): the handshake first, counted.
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError):
                with self._counts_lock:
                    self._counts.failed += 1
                raise
            with self._counts_lock:
                self._counts.handshakes += 1
                self._counts.resumed += bool(request.session_reused)
            handle(request, address)

        # Instance attributes: socketserver looks both up on every new connection.
        server.get_request = get_request  # type: ignore[method-assign]
        server.finish_request = finish_request  # type: ignore[method-assign]
        return self
