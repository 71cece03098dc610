"""Access to what the app factory attached: settings, Redis, the queue and the record store."""

from __future__ import annotations

from flask import current_app
from redis import Redis
from rq import Queue

from config import Settings
from jobs.store import RequestStore


def settings() -> Settings:
    """The app's settings."""
    return current_app.extensions["i2v"]["settings"]


def redis() -> Redis:
    """The app's Redis connection."""
    return current_app.extensions["i2v"]["redis"]


def queue() -> Queue:
    """The queue pipeline jobs go to."""
    return current_app.extensions["i2v"]["queue"]


def store() -> RequestStore:
    """The request record store."""
    return current_app.extensions["i2v"]["store"]
