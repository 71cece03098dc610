"""The pipeline job: caption the image, have the video backend animate it, wait for the video, call back.

One RQ job per request runs :func:`run_request`. Every step starts from what the record says,
so a job that runs again after a crash resumes where the last one stood: it waits on the saved
prediction, polls the saved video job, and never creates either twice. Known failures end the
request at once with one FAILED callback; anything unexpected is left to RQ's retries, and
:func:`on_job_failure` fails the request once they are used up. The backends are known only
through their protocols in ``jobs.backends``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisError

from jobs import metrics, shutdown
from jobs.backends import VideoState
from jobs.context import Context, get_context
from jobs.delivery import attempt_delivery
from jobs.errors import (
    CaptionFailed,
    GenerationFailed,
    GenerationTimeout,
    GenerationUnknown,
    InternalError,
    PipelineError,
    ProviderUnavailable,
    RequestCanceled,
    TransientError,
)
from jobs.media import name_secret
from jobs.states import Stage, Status
from jobs.store import Record, now_iso
from jobs.titles import title_from_video_url

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Polls start on a grid of this many seconds, shared by every thread of a process: the polls due in
#: one beat run back to back, while the code and data they use are still in the CPU's caches, instead
#: of each waking a process whose caches have gone cold (a cost that `make bench`'s threads part shows).
#: See :class:`PollClock`.
POLL_BEAT = 0.25
#: Longest single back-off pause, whatever the attempt count.
MAX_BACKOFF = 30.0


def run_request(key: str) -> str:
    """RQ job: take one request from where its record stands to a finished request and a callback.

    Args:
        key: the Redis key of the request's record.

    Returns:
        The request's final status (``completed``, ``failed`` or ``canceled``).
    """
    ctx = get_context()
    record = ctx.store.get_by_key(key)
    if record is None:
        log.warning("record expired before its job ran", extra={"record_key": key})
        return "missing"
    if not record.terminal:
        generate(ctx, record)
    deliver_first(ctx, key)
    final = ctx.store.get_by_key(key)
    return final.status if final else "missing"


def generate(ctx: Context, record: Record) -> None:
    """Run the provider steps and store the outcome (video or failure) in the record."""
    try:
        check_cancel(ctx, record)
        prompt = record.prompt or caption(ctx, record)
        job_id = record.provider_job_id or submit(ctx, record, prompt)
        ctx.slots.acquire(record.key, force=True)  # a resumed request keeps its place at the provider
        video = wait_for_video(ctx, record, job_id)
    except PipelineError as exc:
        fail(ctx, record, exc)
        return
    finally:
        ctx.slots.release(record.key)
    finished = ctx.store.finish(
        record.key,
        Status.COMPLETED,
        video_url=video.url,
        title=video.title or title_from_video_url(video.url or ""),
        provider_progress=100,
        **delivering(record),
    )
    if finished:
        log_event(record, Status.COMPLETED, video_url=video.url)
        metrics.count(ctx.redis, "i2v_jobs_total", outcome=Status.COMPLETED)


def fail(ctx: Context, record: Record, exc: PipelineError) -> None:
    """End a request with an error code (``canceled`` for a cancel) unless it already ended."""
    status = Status.CANCELED if isinstance(exc, RequestCanceled) else Status.FAILED
    if ctx.store.finish(record.key, status, error_code=exc.code, error_message=exc.message, **delivering(record)):
        metrics.count(ctx.redis, "i2v_jobs_total", outcome=exc.code)
        log.warning(
            "request %s",
            status,
            extra={
                "request_id": record.request_id,
                "stage": record.stage,
                "error_code": exc.code,
                "error": exc.message,
            },
        )


def delivering(record: Record) -> dict[str, Any]:
    """The fields that move a finishing record into the delivering stage."""
    return {"stage": Stage.DELIVERING, "stages": {**record.stages, Stage.DELIVERING: now_iso()}}


def deliver_first(ctx: Context, key: str) -> None:
    """Make the first callback attempt of a finished request, if nobody has yet."""
    attempt_delivery(ctx, key, 1)


# -- captioning -----------------------------------------------------------------------------------


def caption(ctx: Context, record: Record) -> str:
    """Get a prompt for the image from the captioner: at once, or from a (saved, resumable) prediction."""
    with step(ctx, record, Stage.CAPTIONING):
        if record.caption_started_at is None:
            ctx.store.save(record, caption_started_at=time.time())
        prompt = ctx.captioner.describe(record.image_url)
        if prompt is not None:
            ctx.store.save(record, prompt=prompt)
            return prompt
        # One budget for the whole step: "retry for about a minute in all", not per call.
        budget = RetryBudget(ctx.settings.provider_retry_budget)
        prediction_id = record.prediction_id or create_prediction(ctx, record, budget)
        try:
            prompt = wait_for_prediction(ctx, record, prediction_id, budget)
        except RequestCanceled:
            # Nobody will read this caption: stop paying for it.
            with contextlib.suppress(TransientError, CaptionFailed):
                ctx.captioner.cancel(prediction_id)
            raise
        ctx.store.save(record, prompt=prompt)
        return prompt


def create_prediction(ctx: Context, record: Record, budget: RetryBudget) -> str:
    """Create the prediction, saving its id before anything else can happen."""
    if record.caption_inflight:
        # An earlier run sent a create and died before saving the id: a second one could pay twice.
        raise CaptionFailed("an earlier attempt may have created a prediction whose id was lost")

    def create() -> str:
        ctx.store.save(record, caption_inflight=True)
        try:
            return ctx.captioner.create(record.image_url)
        except (TransientError, CaptionFailed) as exc:
            if not isinstance(exc, TransientError) or not exc.sent or exc.kind in ("throttled", "server_error"):
                ctx.store.save(record, caption_inflight=False)
            raise

    prediction_id = with_retries(
        ctx,
        record,
        create,
        budget=budget,
        give_up=CaptionFailed,
        provider=ctx.captioner.name,
        what=f"{ctx.captioner.label} create",
    )
    ctx.store.save(record, prediction_id=prediction_id, caption_inflight=False)
    log_event(record, "prediction created", prediction_id=prediction_id)
    return prediction_id


def wait_for_prediction(ctx: Context, record: Record, prediction_id: str, budget: RetryBudget) -> str:
    """Poll a prediction until it has a prompt, fails, or runs past ``CAPTION_TIMEOUT``."""
    deadline = (record.caption_started_at or time.time()) + ctx.settings.caption_timeout
    while True:
        state = with_retries(
            ctx,
            record,
            lambda: ctx.captioner.get(prediction_id),
            budget=budget,
            give_up=CaptionFailed,
            provider=ctx.captioner.name,
            what=f"{ctx.captioner.label} get",
        )
        if state.status == "succeeded":
            if not state.prompt:
                raise CaptionFailed("the CLIP Interrogator returned an empty prompt")
            return state.prompt
        if state.done:
            raise CaptionFailed(f"the prediction {state.status}: {state.error or 'no error given'}")
        if time.time() >= deadline:
            with contextlib.suppress(TransientError, CaptionFailed):
                ctx.captioner.cancel(prediction_id)
            raise CaptionFailed(f"no prompt within {ctx.settings.caption_timeout:g} s")
        sleep(ctx, record, ctx.settings.caption_poll_interval)


# -- generation -----------------------------------------------------------------------------------


def submit(ctx: Context, record: Record, prompt: str) -> str:
    """Submit the image and prompt to the video backend once, retrying only answers that mean 'not accepted'."""
    with step(ctx, record, Stage.SUBMITTING):
        if record.submit_inflight:
            raise GenerationUnknown("an earlier attempt sent a submission whose answer was lost")
        wait_for_slot(ctx, record)
        name = video_name(ctx, record)
        started = time.monotonic()
        server_errors = 0
        attempt = 0
        while True:
            check_cancel(ctx, record)
            attempt += 1
            ctx.store.save(record, submit_inflight=True)
            try:
                job_id = ctx.video.submit(record.image_url, prompt, name)
            except TransientError as exc:
                provider_error(ctx, record, ctx.video.name, exc)
                if exc.kind == "connection" and exc.sent:
                    # Sent, and the answer lost: it may have been accepted. Never pay twice.
                    raise GenerationUnknown(f"{ctx.video.name} submission sent but unanswered") from exc
                ctx.store.save(record, submit_inflight=False)
                delay = backoff_delay(ctx, attempt, exc.retry_after)
                elapsed = time.monotonic() - started
                if exc.kind == "throttled":
                    if elapsed + delay > ctx.settings.generation_deadline:
                        raise ProviderUnavailable(f"{ctx.video.label} kept throttling for {elapsed:.0f} s") from exc
                else:
                    server_errors += 1
                    if server_errors > 2 or elapsed + delay > ctx.settings.provider_retry_budget / 2:
                        cls = GenerationFailed if exc.kind == "server_error" else ProviderUnavailable
                        raise cls(f"{ctx.video.label} did not accept the submission: {exc.message}") from exc
                log_event(record, f"retrying {ctx.video.label} submission", error=exc.message, delay_s=round(delay, 2))
                sleep(ctx, record, delay)
                continue
            except GenerationFailed:
                ctx.store.save(record, submit_inflight=False)
                raise
            ctx.store.save(
                record, provider=ctx.video.name, provider_job_id=job_id, submitted_at=time.time(), submit_inflight=False
            )
            log_event(record, "submitted", provider=ctx.video.name, provider_job_id=job_id)
            return job_id


def video_name(ctx: Context, record: Record) -> str:
    """The media name of the request's video: the stored one, else made now and stored before use.

    Made once, so that a later change of the name key never renames a video. A request
    submitted before names were stored keeps the name it was submitted with (the unkeyed one).
    """
    if record.media_name:
        return record.media_name
    if record.provider_job_id or record.submitted_at:
        return record.identity.legacy_media_name
    ctx.store.save(record, media_name=record.identity.media_name(name_secret(ctx.settings, ctx.redis)))
    return record.media_name


def wait_for_slot(ctx: Context, record: Record) -> None:
    """Wait until fewer than the backend's cap of requests (``PIKA_MAX_CONCURRENCY``) are in flight."""
    started = time.monotonic()
    while not ctx.slots.acquire(record.key):
        if time.monotonic() - started > ctx.settings.generation_deadline:
            raise ProviderUnavailable(f"no {ctx.video.label} slot came free within the generation deadline")
        sleep(ctx, record, min(1.0, ctx.settings.poll_interval))


def wait_for_video(ctx: Context, record: Record, job_id: str) -> VideoState:
    """Wait for the backend's first look (``first_poll_after``), then poll until the video is ready
    or the deadline passes.

    Deadlines run from the submission time saved in the record, also after a restart.
    """
    submitted_at = record.submitted_at or time.time()
    first_poll = submitted_at + ctx.video.first_poll_after()
    deadline = submitted_at + ctx.settings.generation_deadline
    name = video_name(ctx, record)
    # A resumed request whose first poll is past due polls at once, then every POLL_INTERVAL from now.
    clock = PollClock(max(first_poll, time.time()), ctx.settings.poll_interval)
    try:
        if time.time() < first_poll:
            with step(ctx, record, Stage.WAITING):
                sleep(ctx, record, clock.wait())
        else:
            clock.skip()
        with step(ctx, record, Stage.POLLING):
            check_cancel(ctx, record)  # later polls follow a sleep, which checks too
            while True:
                try:
                    state = ctx.video.poll(job_id, name, record.prompt)
                except TransientError as exc:
                    provider_error(ctx, record, ctx.video.name, exc)
                    log_event(record, "poll failed, polling on", error=exc.message)
                else:
                    if state.finished:
                        return state
                    if state.progress is not None and state.progress != record.provider_progress:
                        record.provider_progress = state.progress
                        ctx.waiting.note_progress(record.key, state.progress)
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise GenerationTimeout(
                        f"no video {ctx.settings.generation_deadline:g} s after the submission to {ctx.video.name}"
                    )
                sleep(ctx, record, min(clock.wait(), remaining))
    except (RequestCanceled, GenerationTimeout):
        # Nobody will watch this video: stop paying for it where the backend can be told.
        with contextlib.suppress(TransientError, PipelineError):
            ctx.video.cancel(job_id)
        raise


# -- shared mechanics ---------------------------------------------------------------------------


@dataclass
class RetryBudget:
    """Time one step may spend on failed provider calls and back-off (``PROVIDER_RETRY_BUDGET``)."""

    seconds: float
    spent: float = 0.0
    failures: int = 0


def with_retries(
    ctx: Context,
    record: Record,
    call: Callable[[], T],
    *,
    budget: RetryBudget,
    give_up: type[PipelineError],
    provider: str,
    what: str,
) -> T:
    """Call ``call``, retrying transient errors with back-off while ``budget`` lasts.

    Args:
        provider: the provider's name, for the error metric.
        what: the call, as messages name it ("Replicate create").
    """
    while True:
        check_cancel(ctx, record)
        started = time.monotonic()
        try:
            return call()
        except TransientError as exc:
            provider_error(ctx, record, provider, exc)
            budget.failures += 1
            budget.spent += time.monotonic() - started
            delay = backoff_delay(ctx, budget.failures, exc.retry_after)
            if budget.spent + delay > budget.seconds:
                raise give_up(f"{what} kept failing for {budget.spent:.0f} s: {exc.message}") from exc
            log_event(record, f"retrying {what}", error=exc.message, delay_s=round(delay, 2))
            sleep(ctx, record, delay)
            budget.spent += delay


def provider_error(ctx: Context, record: Record, provider: str, exc: TransientError) -> None:
    """Count a provider answer that had to be retried, by provider and kind."""
    with contextlib.suppress(RedisError):
        metrics.count(ctx.redis, "i2v_provider_errors_total", provider=provider, kind=exc.kind)


def backoff_delay(ctx: Context, attempt: int, retry_after: float | None) -> float:
    """The pause before retry number ``attempt``: the provider's ``Retry-After`` or exponential."""
    if retry_after is not None:
        return retry_after
    return min(MAX_BACKOFF, ctx.settings.retry_base_delay * 2 ** (attempt - 1))


class PollClock:
    """When a request's polls are due: ``first``, ``first + every``, ... (wall-clock seconds), each
    moved later onto :data:`POLL_BEAT`.

    A poll is never early (a video ready at a slot is seen at that slot, as the documented schedule
    says), at most one beat late, and the slots do not drift: the interval is ``every`` on average.
    A slot that passed while a poll ran (a slow provider) is skipped, not made up in a burst.
    Intervals shorter than two beats (fast test timings) keep their exact slots.
    """

    def __init__(self, first: float, every: float, clock: Callable[[], float] = time.time) -> None:
        self.first = first
        self.every = every
        self.clock = clock
        self._next = 0  # the first slot not used yet

    def skip(self) -> None:
        """Use the next slot without waiting for it (the poll it was for runs now)."""
        self._next += 1

    def wait(self) -> float:
        """Seconds from now until the next slot that has not passed; that slot is then used."""
        now = self.clock()
        slot = max(self._next, math.ceil((now - self.first) / self.every))
        self._next = slot + 1
        due = self.first + slot * self.every
        if self.every >= 2 * POLL_BEAT:
            due = math.ceil(due / POLL_BEAT) * POLL_BEAT
        return max(0.0, due - now)


def check_cancel(ctx: Context, record: Record) -> None:
    """Stop here if the caller canceled the request, or if the worker is shutting down.

    Raises:
        RequestCanceled: the caller canceled.
        WorkerStopping: the worker got SIGTERM; RQ requeues the job and another worker resumes it.
        JobTimeoutException: the job ran past its RQ timeout (enforced here, not by SIGALRM).
    """
    shutdown.check()
    if ctx.redis.hget(record.key, "cancel_requested") in (b"1", "1"):
        raise RequestCanceled("canceled by the caller")


def sleep(ctx: Context, record: Record, seconds: float) -> None:
    """Sleep ``seconds`` in the process's waiting room: a cancel, a SIGTERM or the job's deadline ends it early."""
    ctx.waiting.sleep(record.key, seconds)


@contextlib.contextmanager
def step(ctx: Context, record: Record, stage: Stage) -> Iterator[None]:
    """Record ``stage`` as current and log how long it took and how it ended."""
    ctx.store.enter_stage(record, stage)
    started = time.monotonic()
    log_event(record, f"{stage} started")
    outcome = "ok"
    try:
        yield
    except PipelineError as exc:
        outcome = exc.code
        raise
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        seconds = time.monotonic() - started
        log_event(record, f"{stage} ended", outcome=outcome, duration_ms=round(seconds * 1000, 1))
        with contextlib.suppress(RedisError):
            metrics.observe_stage(ctx.redis, stage, seconds)


def log_event(record: Record, message: str, **fields: Any) -> None:
    """Log one line about a request, with its id and stage."""
    log.info(message, extra={"request_id": record.request_id, "stage": record.stage, **fields})


def on_job_failure(job: Any, connection: Any, exc_type: type, exc: BaseException, tb: Any) -> None:
    """RQ failure callback: once retries are used up, fail the request and call back.

    An unexpected exception is retried by RQ first (the job resumes from its record), so only the
    last failure ends the request.
    """
    if job.should_retry:
        log.warning("job %s failed with %s; RQ retries it", job.id, exc_type.__name__)
        return
    key = job.args[0]
    ctx = get_context()
    record = ctx.store.get_by_key(key)
    if record is None:
        return
    fail(ctx, record, InternalError(f"unexpected {exc_type.__name__} in the pipeline"))
    deliver_first(ctx, key)
