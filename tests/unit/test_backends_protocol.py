"""The backend protocols: each implementation satisfies its own, and the pipeline and the ETA go by them."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from config import Settings, settings_from
from i2v_app.eta import estimate
from jobs.backends import Captioner, PredictionState, VideoBackend, VideoState, video_timing
from jobs.clients.local_backends import LocalCaptioner, LocalVideo
from jobs.clients.pika import PikaClient
from jobs.clients.replicate import ReplicateCaptioner, ReplicateVideo
from jobs.context import Context, build_context
from jobs.errors import TransientError
from jobs.pipeline import generate
from jobs.states import Status
from jobs.store import Record
from tests.fakes.files import FileServer, image_bytes

IMPLEMENTATIONS = [
    (Captioner, LocalCaptioner),
    (Captioner, ReplicateCaptioner),
    (VideoBackend, LocalVideo),
    (VideoBackend, ReplicateVideo),
    (VideoBackend, PikaClient),
]


def backend_settings(tmp_path: Path, redis_url: str, video: str, caption: str = "local", **env: str) -> Settings:
    """Settings for one backend pair, with placeholder tokens (nothing here reaches a provider)."""
    return settings_from(
        {
            "REDIS_URL": redis_url,
            "CAPTION_BACKEND": caption,
            "VIDEO_BACKEND": video,
            "REPLICATE_API_TOKEN": "r8_test",
            "PIKAPI_BEARER_TOKEN": "pika_test",
            "MEDIA_DIR": str(tmp_path / "media"),
            "MEDIA_NAME_SECRET": "media-name-secret-for-tests-0123456789abcdef",
            "PUBLIC_BASE_URL": "https://i2v.example.com",
            "IMAGE_HOST_ALLOWLIST": "127.0.0.1",
            "I2V_AUTH_DISABLED": "1",
            "ALLOW_LOCAL_BACKENDS": "1",
            **env,
        }
    )


def protocol_members(protocol: type) -> tuple[set[str], dict[str, Any]]:
    """The data members and the methods a protocol declares (its own, not ``Protocol``'s)."""
    data = set(protocol.__annotations__)
    methods = {
        name: member
        for name, member in vars(protocol).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }
    return data, methods


@pytest.mark.parametrize(("protocol", "cls"), IMPLEMENTATIONS, ids=lambda p: p.__name__)
def test_each_implementation_has_every_member_of_its_protocol_with_the_same_signature(
    protocol: type, cls: type
) -> None:
    """Names, parameter names, kinds and annotations match; an implementation may only add defaults."""
    data, methods = protocol_members(protocol)
    assert data == {"name", "label"} and methods, "the protocol declares what the pipeline asks"
    for name in data:
        assert isinstance(getattr(cls, name, None), str) and getattr(cls, name), f"{cls.__name__}.{name}"
    for name, declared in methods.items():
        implemented = getattr(cls, name, None)
        assert inspect.isfunction(implemented), f"{cls.__name__}.{name} is missing"
        want, got = inspect.signature(declared), inspect.signature(implemented)
        assert [(p.name, p.kind, p.annotation) for p in got.parameters.values()] == [
            (p.name, p.kind, p.annotation) for p in want.parameters.values()
        ], f"{cls.__name__}.{name}{got} differs from {protocol.__name__}.{name}{want}"
        # A narrower answer satisfies the protocol: "str" where it allows "str | None".
        assert got.return_annotation in (want.return_annotation, want.return_annotation.removesuffix(" | None")), (
            f"{cls.__name__}.{name} returns {got.return_annotation}"
        )


@pytest.mark.parametrize(
    ("caption", "video", "captioner_cls", "video_cls"),
    [
        ("local", "local", LocalCaptioner, LocalVideo),
        ("replicate", "replicate", ReplicateCaptioner, ReplicateVideo),
        ("replicate", "pika", ReplicateCaptioner, PikaClient),
    ],
)
def test_the_context_holds_the_configured_backends_and_they_pass_the_runtime_check(
    tmp_path: Path, redis: Redis, redis_url: str, caption: str, video: str, captioner_cls: type, video_cls: type
) -> None:
    """CAPTION_BACKEND and VIDEO_BACKEND pick the implementation, named as the setting."""
    ctx = build_context(backend_settings(tmp_path, redis_url, video, caption), redis)
    assert type(ctx.captioner) is captioner_cls and isinstance(ctx.captioner, Captioner)
    assert type(ctx.video) is video_cls and isinstance(ctx.video, VideoBackend)
    assert (ctx.captioner.name, ctx.video.name) == (caption, video)


@pytest.mark.parametrize(("video", "limit"), [("pika", 2), ("replicate", 0), ("local", 0)])
def test_the_concurrency_cap_applies_only_where_the_backend_has_one(
    tmp_path: Path, redis: Redis, redis_url: str, video: str, limit: int
) -> None:
    """PIKA_MAX_CONCURRENCY caps Pika; the other backends are not held back by it."""
    ctx = build_context(backend_settings(tmp_path, redis_url, video, PIKA_MAX_CONCURRENCY="2"), redis)
    assert ctx.video.max_concurrency() == limit
    assert ctx.slots.limit == limit


@pytest.mark.parametrize(("video", "first_poll"), [("pika", 300.0), ("replicate", 10.0), ("local", 0.0)])
def test_the_pipeline_and_the_eta_wait_for_the_same_first_poll(
    tmp_path: Path, redis: Redis, redis_url: str, video: str, first_poll: float
) -> None:
    """INITIAL_WAIT_TIME for Pika, POLL_INTERVAL for Replicate, none for the local render."""
    settings = backend_settings(tmp_path, redis_url, video, INITIAL_WAIT_TIME="300", POLL_INTERVAL="10")
    ctx = build_context(settings, redis)
    assert ctx.video.first_poll_after() == first_poll
    assert video_timing(settings).first_poll_after(settings) == first_poll


@pytest.mark.parametrize(
    ("caption", "video", "typical"),
    [
        # What the ETA said before the backends moved behind the protocols: caption + video.
        ("replicate", "pika", 20.0 + 300.0 + 10.0),
        ("local", "pika", 1.0 + 300.0 + 10.0),
        ("replicate", "replicate", 20.0 + 90.0),
        ("local", "local", 1.0 + 5.0),
    ],
)
def test_the_eta_of_a_queued_request_is_unchanged(
    tmp_path: Path, redis_url: str, caption: str, video: str, typical: float
) -> None:
    """Three requests ahead and two single-threaded workers: one wave of waiting, then this request's own run."""
    settings = backend_settings(
        tmp_path, redis_url, video, caption, INITIAL_WAIT_TIME="300", POLL_INTERVAL="10", WORKER_THREADS="1"
    )
    record = Record(request_id="eta-1", image_url="https://cdn.example.com/a.png")
    latest = {"replicate": 20.0, "local": 1.0}[caption] + settings.generation_deadline
    assert estimate(settings, record, ahead=3, workers=2) == (math.ceil(2 * typical), math.ceil(typical + latest))


def test_the_local_captioner_gives_the_same_prompt_at_once_and_as_a_prediction(
    tmp_path: Path, redis_url: str, files: FileServer
) -> None:
    """describe() answers at once; create() and get() answer the same prompt as a finished prediction."""
    settings = backend_settings(tmp_path, redis_url, "local")
    url = files.put("/red.png", image_bytes((300, 200), (200, 35, 35)), "image/png")
    captioner = build_context(settings, Redis.from_url(redis_url)).captioner
    prompt = captioner.describe(url)
    assert prompt is not None and " in red, " in prompt
    state = captioner.get(captioner.create(url))
    assert state == PredictionState(status="succeeded", prompt=prompt)
    assert state.done


class EndlessVideo:
    """A video backend of the test's own: accepts a job, never finishes it, records cancels."""

    name = "endless"
    label = "Endless"

    def __init__(self, throttle: int = 0) -> None:
        self.throttle = throttle
        self.submitted: list[str] = []
        self.canceled: list[str] = []

    def first_poll_after(self) -> float:
        """Look at once."""
        return 0.0

    def max_concurrency(self) -> int:
        """No cap."""
        return 0

    def submit(self, image_url: str, prompt: str, media_name: str) -> str:
        """Throttle the first ``throttle`` submissions, then accept."""
        if len(self.submitted) < self.throttle:
            self.submitted.append("throttled")
            raise TransientError("Endless is busy", kind="throttled", retry_after=0.05)
        self.submitted.append(media_name)
        return f"job-{len(self.submitted)}"

    def poll(self, job_id: str, media_name: str, prompt: str | None) -> VideoState:
        """Still running."""
        return VideoState(status="running", progress=10)

    def cancel(self, job_id: str) -> None:
        """Note the cancel."""
        self.canceled.append(job_id)


def run_with(tmp_path: Path, redis: Redis, redis_url: str, video: EndlessVideo, **env: str) -> tuple[Context, Record]:
    """Run the pipeline's provider steps for one captioned request with ``video`` as the backend."""
    settings = backend_settings(tmp_path, redis_url, "local", INITIAL_WAIT_TIME="0", POLL_INTERVAL="0.05", **env)
    ctx = dataclasses.replace(build_context(settings, redis), video=video)
    assert isinstance(video, VideoBackend)
    record = Record(request_id="endless-1", image_url="https://cdn.example.com/a.png", prompt="a plane")
    redis.hset(record.key, mapping=record.to_redis())
    generate(ctx, record)
    final = ctx.store.get_by_key(record.key)
    assert final is not None
    return ctx, final


def test_a_backend_that_never_finishes_is_told_to_cancel_at_the_deadline(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    """The pipeline cancels through the protocol, whatever the backend, and names it in the failure."""
    video = EndlessVideo()
    _, final = run_with(tmp_path, redis, redis_url, video, MAX_CHECK_TIME="0.3")
    assert (final.status, final.error_code, final.provider) == (Status.FAILED, "generation_timeout", "endless")
    assert final.error_message == "no video 0.3 s after the submission to endless"
    assert video.canceled == ["job-1"]


def test_a_throttling_backend_is_named_by_its_own_label(tmp_path: Path, redis: Redis, redis_url: str) -> None:
    """Throttled past the generation deadline, the failure names the backend that throttled."""
    video = EndlessVideo(throttle=1000)
    _, final = run_with(tmp_path, redis, redis_url, video, MAX_CHECK_TIME="0.2")
    assert (final.status, final.error_code) == (Status.FAILED, "provider_unavailable")
    assert final.error_message is not None and final.error_message.startswith("Endless kept throttling for ")
    assert video.canceled == []
