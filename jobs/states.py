"""A request's statuses, stages and callback statuses, declared once for the store, its Lua, the API and the CLI.

The values are stored in records and shown by the API, so they never change.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Status(StrEnum):
    """Where a request is: queued, then processing, then one terminal status."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


#: The statuses a request never leaves.
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})


class Stage(StrEnum):
    """The step a request is in, in the order they run (none while queued or once the callback settles)."""

    CAPTIONING = "captioning"
    SUBMITTING = "submitting"
    WAITING = "waiting"
    POLLING = "polling"
    DELIVERING = "delivering"


class CallbackStatus(StrEnum):
    """Where a request's callback is: pending until delivered or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def lua_is_one_of(variable: str, values: Iterable[str]) -> str:
    """A Lua condition true when ``variable`` equals one of ``values`` (which hold no quotes)."""
    return "(" + " or ".join(f"{variable} == '{value}'" for value in sorted(values)) + ")"
