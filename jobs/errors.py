"""The pipeline's failure taxonomy: every way a request can end other than with a video.

Each class carries the ``code`` that lands in the request record's ``error.code`` and in logs.
Provider clients raise these (or :class:`TransientError` for answers worth retrying); the pipeline
turns any of them into one FAILED callback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A request failed for a known reason; ``code`` names the reason."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CaptionFailed(PipelineError):
    """Replicate gave no usable prompt: failed, canceled, empty output, or kept erroring."""

    code = "caption_failed"


class GenerationFailed(PipelineError):
    """Pika refused the submission or reported the video failed."""

    code = "generation_failed"


class GenerationUnknown(PipelineError):
    """A Pika submission was sent but no answer came back; resubmitting could charge twice."""

    code = "generation_unknown"


class GenerationTimeout(PipelineError):
    """The video was not ready ``INITIAL_WAIT_TIME + MAX_CHECK_TIME`` seconds after submission."""

    code = "generation_timeout"


class ProviderUnavailable(PipelineError):
    """A provider could not be reached at all (connection refused, DNS) within the retry budget."""

    code = "provider_unavailable"


class RequestCanceled(PipelineError):
    """The caller canceled the request."""

    code = "canceled"


class InternalError(PipelineError):
    """An unexpected exception that RQ's retries did not cure."""

    code = "internal_error"


class TransientError(Exception):
    """A provider answer worth retrying (throttling, 5xx, a dropped connection before sending).

    Attributes:
        kind: ``throttled`` (429), ``server_error`` (5xx), ``connection`` or ``malformed``.
        retry_after: seconds the provider asked us to wait, if it said.
        sent: whether the request may have reached the provider.
    """

    def __init__(self, message: str, *, kind: str, retry_after: float | None = None, sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.sent = sent
