"""gunicorn settings, Heroku-style: PORT and WEB_CONCURRENCY come from the environment."""

import os

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
