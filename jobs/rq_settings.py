"""Settings module for ``rq worker -c jobs.rq_settings``: Redis and queue from our configuration."""

from config import ConfigError, load_settings

try:
    _settings = load_settings()
except ConfigError as exc:
    raise SystemExit(f"i2v worker: {exc}") from None

REDIS_URL = _settings.redis_url
QUEUES = [_settings.queue_name]
