"""gunicorn settings, Heroku-style: PORT and WEB_CONCURRENCY come from the environment."""

import os
import shutil
import tempfile

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
access_log_format = '{"remote": "%(h)s", "request": "%(r)s", "status": %(s)s, "bytes": %(B)s, "ms": %(M)s}'
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
