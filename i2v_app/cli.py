"""``flask i2v ...``: look at and steer requests from a shell, without going through HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import click
from flask import Flask
from flask.cli import AppGroup
from marshmallow import ValidationError

from i2v_app import lifecycle, services
from i2v_app.api import present
from i2v_app.schemas import SubmitSchema, validate_request_id
from jobs.identity import KEY_PREFIX
from jobs.states import Stage, Status
from jobs.store import Record

i2v = AppGroup("i2v", help="Inspect and steer image-to-video requests.")


def _load(request_id: str, owner: str) -> Record:
    record = services.store().get(owner, request_id)
    if record is None:
        raise click.ClickException(f"no request with id {request_id!r}")
    return record


def _print(record: Record) -> None:
    click.echo(json.dumps(present(record), indent=2))


owner_option = click.option("--owner", default="", help="The API key identity that owns the request.")


@i2v.command("status")
@click.argument("request_id")
@owner_option
def status(request_id: str, owner: str) -> None:
    """Print a request's record as JSON."""
    _print(_load(request_id, owner))


@i2v.command("cancel")
@click.argument("request_id")
@owner_option
def cancel(request_id: str, owner: str) -> None:
    """Cancel a request; exactly one FAILED callback follows."""
    _act(lifecycle.cancel, request_id, owner)


@i2v.command("redeliver")
@click.argument("request_id")
@owner_option
def redeliver(request_id: str, owner: str) -> None:
    """Send a callback again after it ran out of retries."""
    _act(lifecycle.redeliver, request_id, owner)


def _act(action: Callable[[Record], Record], request_id: str, owner: str) -> None:
    """Apply a lifecycle action to a request and print the result (a conflict is a clean error)."""
    try:
        _print(action(_load(request_id, owner)))
    except lifecycle.Conflict as exc:
        raise click.ClickException(str(exc)) from None


@i2v.command("submit")
@click.argument("image_url")
@click.option("--request-id", default=None, help="The request's id (default: a new random one).")
@click.option("--wait", is_flag=True, help="Wait for the result, with a progress bar.")
@owner_option
def submit(image_url: str, request_id: str | None, wait: bool, owner: str) -> None:
    """Submit an image URL, as POST /api/v1/i2v would."""
    try:
        image_url = SubmitSchema().load({"image_id": image_url})["image_id"]
        validate_request_id(request_id := request_id or f"cli-{uuid.uuid4().hex[:12]}")
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {exc.messages}") from None
    record = Record(request_id=request_id, image_url=image_url, owner=owner)
    try:
        outcome = lifecycle.submit(record)
    except (lifecycle.Backlogged, lifecycle.InUse) as exc:
        raise click.ClickException(str(exc)) from None
    stored, created = outcome.record, outcome.created
    if not created and stored.image_url != image_url:
        raise click.ClickException(f"request id {request_id!r} was already used with a different image")
    click.echo(f"{'submitted' if created else 'already known'}: {request_id}")
    if wait:
        stored = _wait(stored)
        _print(stored)
        if stored.status != Status.COMPLETED:
            raise SystemExit(1)


#: How far along the progress bar each stage starts (polling then moves with the provider's progress).
_STAGE_SHARE = {Stage.CAPTIONING: 10, Stage.SUBMITTING: 20, Stage.WAITING: 30, Stage.POLLING: 40, Stage.DELIVERING: 100}


def _wait(record: Record) -> Record:
    """Follow a request until it finishes, showing its stage and progress."""
    store = services.store()
    with click.progressbar(length=100, label=Status.QUEUED, show_percent=True) as bar:
        done = 0
        while True:
            current = store.get_by_key(record.key) or record
            target = max(_STAGE_SHARE.get(current.stage or "", 0), 40 + (current.provider_progress or 0) * 6 // 10)
            if current.terminal:
                target = 100
            bar.label = current.stage or current.status
            bar.update(max(0, target - done))
            done = max(done, target)
            if current.terminal:
                return current
            time.sleep(0.5)


@i2v.command("list")
@click.option("--status", "status_filter", type=click.Choice([s.value for s in Status]))
@click.option("--limit", default=50, show_default=True, help="At most this many, newest first.")
def list_requests(status_filter: str | None, limit: int) -> None:
    """List requests (newest first), optionally only those with one status."""
    store = services.store()
    records = []
    for key in store.redis.scan_iter(match=f"{KEY_PREFIX}*", count=500):
        record = store.get_by_key(key.decode() if isinstance(key, bytes) else key)
        if record and (status_filter is None or record.status == status_filter):
            records.append(record)
    records.sort(key=lambda r: r.created_at, reverse=True)
    for record in records[:limit]:
        click.echo(f"{record.created_at}  {record.status:<10} {record.stage or '-':<11} {record.request_id}")


@i2v.command("reindex")
def reindex() -> None:
    """Add requests made before the per-key list existed to it (run once after upgrading)."""
    added = services.store().reindex()
    click.echo(f"added {added} requests to their keys' lists")


@i2v.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(burst: bool) -> None:
    """Run one pipeline worker in this process (the Procfile's ``worker`` line runs a pool of them)."""
    from jobs.worker import PipelineWorker  # the web process never imports worker code

    PipelineWorker([services.settings().queue_name]).work(burst=burst)  # moves scheduled jobs itself


def register(app: Flask) -> None:
    """Add the ``i2v`` command group to the app's CLI."""
    app.cli.add_command(i2v)
