"""``flask i2v ...``: look at and steer requests from a shell, without going through HTTP."""

from __future__ import annotations

import json

import click
from flask import Flask
from flask.cli import AppGroup

from i2v_app import lifecycle, services
from i2v_app.api import present
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
    try:
        _print(lifecycle.cancel(_load(request_id, owner)))
    except lifecycle.Conflict as exc:
        raise click.ClickException(str(exc)) from None


@i2v.command("redeliver")
@click.argument("request_id")
@owner_option
def redeliver(request_id: str, owner: str) -> None:
    """Send a callback again after it ran out of retries."""
    try:
        _print(lifecycle.redeliver(_load(request_id, owner)))
    except lifecycle.Conflict as exc:
        raise click.ClickException(str(exc)) from None


def register(app: Flask) -> None:
    """Add the ``i2v`` command group to the app's CLI."""
    app.cli.add_command(i2v)
