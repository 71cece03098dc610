"""HTTP fakes of the outside systems (Replicate, Pika, GAME), served on 127.0.0.1 for tests."""

from dataclasses import dataclass

from .base import FakeServer, Fault, Headers, Recorded
from .game import Callback, FakeGame, payload_problems, verify_signature
from .pika import FakePika, generation_problems
from .replicate import (
    CLIP_INTERROGATOR,
    CLIP_MODEL_ID,
    CLIP_VERSION,
    DEFAULT_CAPTION,
    FakeReplicate,
    ModelSpec,
)


@dataclass(frozen=True)
class Fakes:
    """The three fakes of one test, by name: ``fakes.replicate``, ``fakes.pika``, ``fakes.game``."""

    replicate: FakeReplicate
    pika: FakePika
    game: FakeGame


__all__ = [
    "CLIP_INTERROGATOR",
    "CLIP_MODEL_ID",
    "CLIP_VERSION",
    "DEFAULT_CAPTION",
    "Callback",
    "FakeGame",
    "FakePika",
    "FakeReplicate",
    "FakeServer",
    "Fakes",
    "Fault",
    "Headers",
    "ModelSpec",
    "Recorded",
    "generation_problems",
    "payload_problems",
    "verify_signature",
]
