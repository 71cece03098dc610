"""The RQ worker the Procfile runs: refuses to start without provider tokens, heart-beats tightly."""

from __future__ import annotations

from typing import Any

from rq import Worker
from rq.job import Job

from config import ConfigError, configure_logging, load_settings


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
        super().__init__(*args, **kwargs)
        self.job_monitoring_interval = settings.worker_heartbeat_interval

    #: Seconds a missed heartbeat is tolerated. RQ allows 60; a shorter grace lets the janitor
    #: hand a dead worker's request to a live one well within two minutes.
    HEARTBEAT_GRACE = 15

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long the current execution counts as alive without another heartbeat."""
        remaining = job.timeout - working_time if job.timeout and job.timeout > 0 else self.job_monitoring_interval
        return int(min(remaining, self.job_monitoring_interval)) + self.HEARTBEAT_GRACE
