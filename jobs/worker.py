"""The RQ worker the Procfile runs: refuses to start without provider tokens."""

from __future__ import annotations

from typing import Any

from rq import Worker

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
