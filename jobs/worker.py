"""The RQ worker the Procfile runs: refuses to start without provider tokens, heart-beats tightly."""

from __future__ import annotations

import signal
from typing import Any

from rq import Queue, Worker
from rq.job import Job

from config import ConfigError, configure_logging, load_settings
from jobs.context import resilient_redis


class PipelineWorker(Worker):
    """An ``rq.Worker`` that validates the settings before it takes any job.

    A bad setting or a missing provider token stops the process at start with a message naming
    the variables, instead of failing every request later.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            raise SystemExit(f"i2v worker: {exc}") from None
        missing = settings.missing_worker_tokens()
        if missing:
            raise SystemExit(f"i2v worker: refusing to start, missing {', '.join(missing)}")
        configure_logging(settings)
        # Replace the CLI's plain connection: this one waits out Redis outages (see resilient_redis).
        connection = resilient_redis(settings.redis_url)
        kwargs["connection"] = connection
        if args:
            # The CLI built its queues on its own connection; rebuild them on this one.
            queues = [Queue(getattr(q, "name", q), connection=connection) for q in args[0]]
            args = (queues, *args[1:])
        super().__init__(*args, **kwargs)
        self.job_monitoring_interval = settings.worker_heartbeat_interval

    #: Seconds a missed heartbeat is tolerated. RQ allows 60; a shorter grace lets the janitor
    #: hand a dead worker's request to a live one well within two minutes.
    HEARTBEAT_GRACE = 15

    def request_stop(self, signum: int, frame: Any) -> None:
        """On SIGTERM, hand the running request back at once instead of finishing it here.

        A platform restart (Heroku: SIGTERM, then SIGKILL 30 s later) would otherwise cut a wait of
        minutes short anyway. Ending the work-horse now makes RQ requeue the job, and a live worker
        resumes it from its record: same prediction, same Pika job, one callback.
        """
        super().request_stop(signum, frame)
        if self.horse_pid:
            self.log.info("Worker %s: handing the running job back to the queue", self.name)
            self.kill_horse(signal.SIGTERM)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long the current execution counts as alive without another heartbeat."""
        remaining = job.timeout - working_time if job.timeout and job.timeout > 0 else self.job_monitoring_interval
        return int(min(remaining, self.job_monitoring_interval)) + self.HEARTBEAT_GRACE
