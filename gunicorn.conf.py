"""gunicorn settings, Heroku-style: PORT and WEB_CONCURRENCY come from the environment."""

import os
import shutil
import tempfile

from prometheus_client import multiprocess

# /metrics must count every gunicorn worker: prometheus_client's multiprocess mode keeps each
# worker's numbers in files here. Set before the app (and prometheus_client's metrics) load.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="i2v-metrics-")

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let one worker overlap Redis round trips; requests never wait on providers.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# Under Heroku's 30 s router timeout: a worker silent for longer is restarted by gunicorn.
timeout = 25
graceful_timeout = 20
keepalive = 5
# Load the app in the master: a bad setting then stops gunicorn at start with the app's message,
# instead of workers that exit and are restarted forever.
preload_app = True
control_socket_disable = True
accesslog = "-"
access_log_format = '{"remote": "%(h)s", "request": "%(r)s", "status": %(s)s, "bytes": %(B)s, "ms": %(M)s}'
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server) -> None:
    """Start from empty metric files: numbers of a previous run would be counted again."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker) -> None:
    """Let a dead worker's live gauges go (its counters stay counted)."""
    multiprocess.mark_process_dead(worker.pid)
