"""Callback delivery: one acknowledged callback per request, signed, retried, recorded.

The first attempt runs in the job that finished the request; each retry is its own RQ job,
scheduled after the next delay of ``CALLBACK_RETRY_DELAYS``, so a dead receiver never holds a
worker. Every attempt of one request carries the same ``webhook-id``; attempts are claimed in the
record so that no attempt is ever sent twice.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from jobs import metrics
from jobs.clients.game import may_carry_key
from jobs.context import Context, get_context
from jobs.states import CallbackStatus, Stage, Status
from jobs.store import CALLBACK_HISTORY_KEEP, DELIVERY_JOB, Record, callback_target, callback_url, now_iso

log = logging.getLogger(__name__)


def callback_payload(record: Record) -> dict[str, Any]:
    """The GAME callback body for a finished request."""
    if record.status == Status.COMPLETED and record.video_url:
        output = {"title": record.title, "type": "MEDIA", "category": "MARKETING_VIDEO", "url": record.video_url}
        return {"data": {"addToInventory": True, "status": "COMPLETED", "output": output}}
    return {"data": {"addToInventory": False, "status": "FAILED", "output": None}}


def sign(secrets: tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``webhook-signature``: one ``v1,<base64>`` entry per secret, space-separated."""
    # The library signs text and whole seconds of a datetime; the body is UTF-8 JSON and the
    # timestamp whole seconds, so both round-trip to the bytes and number sent in the headers.
    when = datetime.fromtimestamp(timestamp, UTC)
    text = body.decode()
    return " ".join(Webhook(secret).sign(msg_id, when, text) for secret in secrets)


def delivery_target(ctx: Context, record: Record) -> tuple[str, dict[str, str]]:
    """Where a record's callback goes and the headers only that destination may see.

    Raises:
        ValueError: the request id cannot name a callback URL (see :func:`callback_url`).
    """
    own_url = callback_url(ctx.settings.callback_api_url, record.request_id)
    url = callback_target(ctx.settings.callback_api_url, record)
    headers: dict[str, str] = {}
    # The GAME key belongs to GAME's callback of this request: a per-request URL, even on GAME's
    # host, never sees it.
    if ctx.settings.game_api_key and may_carry_key(url, own_url, development=ctx.settings.development):
        headers["x-api-key"] = ctx.settings.game_api_key
    return url, headers


def with_attempt(record: Record, at: str, status_code: int | None, error: str | None) -> list[dict[str, Any]]:
    """The record's callback history with one more attempt, keeping the newest ``CALLBACK_HISTORY_KEEP``."""
    entry = {"at": at, "status_code": status_code, "error": error}
    return [*record.callback_history, entry][-CALLBACK_HISTORY_KEEP:]


def claim_ttl(ctx: Context) -> float:
    """How long an attempt's claim holds: longer than any one attempt can take."""
    return ctx.settings.http_connect_timeout + ctx.settings.http_read_timeout + 5


def attempt_delivery(ctx: Context, key: str, attempt: int) -> None:
    """Make delivery attempt number ``attempt`` (1-based) of a finished request's callback."""
    record = ctx.store.get_by_key(key)
    if record is None or not record.terminal or record.callback_status != CallbackStatus.PENDING:
        return
    if attempt <= record.callback_attempts or not ctx.store.claim(key, f"callback_claim_{attempt}", claim_ttl(ctx)):
        return  # this attempt was already made, or another process is making it

    try:
        url, headers = delivery_target(ctx, record)
    except ValueError as exc:
        # Only a record from before such ids were refused gets here: nothing is sent, ever.
        log.error("callback not sent", extra={"request_id": record.request_id, "error": str(exc)})
        history = with_attempt(record, now_iso(), None, f"not sent: {exc}")
        ctx.store.update(
            key, callback_status=CallbackStatus.FAILED, callback_attempts=attempt, stage=None, callback_history=history
        )
        ctx.store.settle(key)
        return
    body = json.dumps(callback_payload(record), separators=(",", ":")).encode()
    msg_id = record.identity.webhook_id
    timestamp = int(time.time())
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(timestamp)
    if ctx.settings.callback_signing_secrets:
        headers["webhook-signature"] = sign(ctx.settings.callback_signing_secrets, msg_id, timestamp, body)

    started = time.monotonic()
    sent_at = now_iso()
    result = ctx.game.post(url, body, headers)
    fields: dict[str, Any] = {
        "callback_attempts": attempt,
        "callback_last_status_code": result.status_code,
        "callback_next_attempt_at": None,
        # The attempt holds this attempt's claim, so no other writer of the history runs meanwhile.
        "callback_history": with_attempt(record, sent_at, result.status_code, result.error),
    }
    delays = ctx.settings.callback_retry_delays
    if result.delivered:
        fields.update(callback_status=CallbackStatus.DELIVERED, stage=None)
    elif result.status_code == 410 or attempt > len(delays):
        fields.update(callback_status=CallbackStatus.FAILED, stage=None)
    else:
        delay = max(delays[attempt - 1], result.retry_after or 0.0)
        # RQ's scheduler keeps whole seconds, truncated: round up, so a retry never comes early.
        when = datetime.fromtimestamp(math.ceil(time.time() + delay), UTC)
        fields["callback_next_attempt_at"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ctx.queue.enqueue_at(
            when,
            DELIVERY_JOB,
            key,
            attempt + 1,
            job_id=record.identity.delivery_job_id(attempt + 1),
            result_ttl=600,
        )
    # Counted before the record says so, so whoever reads a settled record sees the count too.
    metrics.count(ctx.redis, "i2v_callback_attempts_total", outcome=fields.get("callback_status", "retry"))
    ctx.store.update(key, **fields)
    if "callback_status" in fields:
        ctx.store.settle(key)
    log.info(
        "callback attempt",
        extra={
            "request_id": record.request_id,
            "stage": Stage.DELIVERING,
            "attempt": attempt,
            "status_code": result.status_code,
            "error": result.error,
            "outcome": fields.get("callback_status", "retry"),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        },
    )


def deliver_callback(key: str, attempt: int = 1) -> None:
    """RQ job: make one delivery attempt (retries are scheduled by the attempt before)."""
    attempt_delivery(get_context(), key, attempt)
