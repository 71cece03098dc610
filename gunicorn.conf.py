"""gunicorn settings, Heroku-style: PORT and WEB_CONCURRENCY come from the environment."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from gunicorn.glogging import Logger

if TYPE_CHECKING:
    from config import Settings

# /metrics must count every gunicorn worker: prometheus_client's multiprocess mode keeps each
# worker's numbers in files here. Set before prometheus_client is imported anywhere, and start
# from empty files: numbers of a previous run would be counted again.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
else:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="i2v-metrics-")

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# One request at a time per process (gunicorn's sync worker) unless GUNICORN_THREADS says otherwise:
# a request never waits on a provider, only on one Redis round trip, so threads win little, and a
# kept-alive connection stays with the busy process that accepted it, which lengthens the tail
# (bench/RESULTS.md measures both). Put a buffering proxy (Heroku's router, nginx) in front.
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# Under Heroku's 30 s router timeout: a worker silent for longer is restarted by gunicorn.
timeout = 25
graceful_timeout = 20
keepalive = 5
# Load the app in the master: a bad setting then stops gunicorn at start with the app's message,
# instead of workers that exit and are restarted forever.
preload_app = True
control_socket_disable = True
accesslog = "-"
#: The access line for ``LOG_FORMAT=text`` (MaskingLogger switches to it).
TEXT_ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s bytes %(M)s ms'
access_log_format = '{"remote": "%(h)s", "request": "%(r)s", "status": %(s)s, "bytes": %(B)s, "ms": %(M)s}'
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def _settings(server: object) -> Settings | None:
    """The settings the preloaded app runs with, or freshly loaded ones (another app, a bad value)."""
    # Imported here, not at the top: PROMETHEUS_MULTIPROC_DIR must be set before the app's modules load.
    from config import load_or_exit

    # The preloaded app, never loaded here: without preloading the master must not import the app.
    app = getattr(server.app, "callable", None)
    with contextlib.suppress(AttributeError, KeyError):
        return app.extensions["i2v"]["settings"]
    try:
        return load_or_exit("web")
    except SystemExit:
        return None


def when_ready(server: object) -> None:
    """Refuse to serve when an unsafe mode meets a listener that is not loopback.

    Checked on gunicorn's actual sockets (whatever ``bind``, ``HOST`` or ``--bind`` said), before
    any worker starts: ``I2V_AUTH_DISABLED=1`` or development mode on 0.0.0.0 would open the
    API, ``/dev/*`` and ``/rq`` to anyone who can connect.
    """
    settings = _settings(server)
    if settings is None:
        return
    hosts = []
    for listener in server.LISTENERS:
        address = listener.sock.getsockname()
        if isinstance(address, tuple):  # TCP; a unix socket is local by nature
            hosts.append(str(address[0]))
    problem = settings.public_listener_problem(hosts)
    if problem:
        server.halt(reason=f"i2v web: {problem}", exit_status=1)


class MaskingLogger(Logger):
    """gunicorn's logger in the service's ``LOG_FORMAT``, with known secrets masked in every line.

    Its own lines (start, stop, worker restarts) go through the same formatter as the app's; in
    ``text`` the access line is readable text too, in ``json`` it stays the JSON object above.
    """

    def setup(self, cfg: object) -> None:
        """Set up gunicorn's handlers, then give them our formatter and the secret filter."""
        from config import known_secrets, load_or_exit
        from logs import SecretFilter, log_formatter

        try:
            settings = load_or_exit("web")  # kept: the preloaded app gets the same settings
        except SystemExit:
            super().setup(cfg)
            return  # the app stops at start with a message that is masked already
        if settings.log_format == "text":
            cfg.set("access_log_format", TEXT_ACCESS_LOG_FORMAT)
        super().setup(cfg)
        secret_filter = SecretFilter(known_secrets(settings))
        formatter = log_formatter(settings)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.addFilter(secret_filter)
                if log is self.error_log or settings.log_format == "text":
                    handler.setFormatter(formatter)


logger_class = MaskingLogger
