"""Settings module for ``rq worker-pool -c jobs.rq_settings``: Redis and queue from our configuration.

The pool's parent process reads this before it starts any worker, so a bad setting or a missing
provider token stops the whole process at start with a message naming the variables.
"""

from config import ConfigError, load_settings
from logs import configure_logging

try:
    _settings = load_settings()
except ConfigError as exc:
    raise SystemExit(f"i2v worker: {exc}") from None
if missing := _settings.missing_worker_tokens():
    raise SystemExit(f"i2v worker: refusing to start, missing {', '.join(missing)}")

# Before RQ sets up its own log handlers: finding ours, it logs through them (JSON lines) too.
configure_logging(_settings)

REDIS_URL = _settings.redis_url
QUEUES = [_settings.queue_name]
