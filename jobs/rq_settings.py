"""Settings module for ``rq worker-pool -c jobs.rq_settings``: Redis and queue from our configuration.

The pool's parent process reads this before it starts any worker, so a bad setting or a missing
provider token stops the whole process at start with a message naming the variables.
"""

from config import load_or_exit
from logs import configure_logging

# The workers the pool forks inherit these settings: the worker process loads them only here.
_settings = load_or_exit("worker", provider_tokens=True)

# Before RQ sets up its own log handlers: finding ours, it logs through them (JSON lines) too.
configure_logging(_settings)

REDIS_URL = _settings.redis_url
QUEUES = [_settings.queue_name]
