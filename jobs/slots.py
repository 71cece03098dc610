"""A cap on requests in flight at the video provider (Pika's ``PIKA_MAX_CONCURRENCY``), shared by every worker.

A Redis sorted set of holders, scored by when their lease runs out, so a crashed worker's slot
frees itself. RQ's own ``RateLimit`` is not used: it cannot join the transaction that writes a
record and its job together, and it would cap whole jobs (captioning included) instead of the
time a request spends at the provider.
"""

from __future__ import annotations

import time

from redis import Redis

SLOTS_KEY = "i2v:pika:slots"

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or ARGV[5] == '1'
   or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
return 0
"""


class VideoSlots:
    """Slots at the video provider, one per request in flight.

    Args:
        redis: the connection.
        limit: how many requests may be in flight at once (the backend's ``max_concurrency``); 0 means no cap.
        lease: seconds a slot is held without being released (longer than any request's wait).
    """

    def __init__(self, redis: Redis, limit: int, lease: float) -> None:
        self.redis = redis
        self.limit = limit
        self.lease = lease
        self._acquire = redis.register_script(_ACQUIRE)

    def acquire(self, holder: str, *, force: bool = False) -> bool:
        """Take (or keep) a slot for ``holder``; ``force`` takes one even when all are held."""
        if not self.limit:
            return True
        now = time.time()
        args = [now, now + self.lease, holder, self.limit, "1" if force else "0"]
        return self._acquire(keys=[SLOTS_KEY], args=args) == 1

    def release(self, holder: str) -> None:
        """Give the slot back."""
        if self.limit:
            self.redis.zrem(SLOTS_KEY, holder)
