"""Every setting of the service, declared once: read from the environment (and `.env`) and validated.

Each setting is one field of :class:`Settings`, declared with :func:`setting`: its variable name,
default, what it accepts (bounds, choices), one line of doc, and whether it is a secret. Reading
and validation (through environs), ``.env.example`` and the reference in
``docs/configuration.md`` all come from those declarations; ``python -m config --write`` rewrites
the two files. Every process loads its settings once, through :func:`load_or_exit`; a bad value
stops it at start with a message that names the variable. Secrets are kept out of ``repr`` so that
a logged or printed ``Settings`` never shows a token.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import marshmallow
from dotenv import find_dotenv, load_dotenv
from environs import Env, EnvValidationError

DEFAULT_REPLICATE_MODEL_ID = (
    "pharmapsychotic/clip-interrogator:8151e1c9f47e696fa316146a2e35812ccf79cfc9eba05b11c7f450155102af70"
)
CLIP_MODEL_NAMES = ("ViT-L-14/openai", "ViT-H-14/laion2b_s32b_b79k", "ViT-bigG-14/laion2b_s39b_b160k")
CLIP_MODES = ("best", "classic", "fast", "negative")
PIKA_ASPECT_RATIOS = ("16:9", "9:16", "1:1", "5:2", "4:5", "4:3")
LOG_FORMATS = ("json", "text")
#: Plain API and admin keys shorter than this are refused: they could be guessed.
MIN_KEY_LENGTH = 16
#: The server secret that media names are made from must be at least this long.
MIN_MEDIA_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """A setting is missing or has a value the service cannot run with."""


# --- What a variable accepts ----------------------------------------------------------------------
# Each parser takes the variable's name and its given text (stripped, never empty) and returns the
# value or raises ConfigError with a message that names the variable and, unless it is a secret,
# the bad value.

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _parse_number(name: str, raw: str, *, integer: bool, minimum: float, maximum: float | None) -> float:
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum:g}" if maximum is not None else ""
        raise ConfigError(f"{name} must be at least {minimum:g}{upper}, got {raw!r}")
    return value


def _parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return raw


def _parse_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not parts.netloc:
        # Masked: REDIS_URL carries a password, and start-up errors end up in logs.
        raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {mask_url(raw)!r}")
    return raw.rstrip("/") if parts.scheme in ("http", "https") else raw


def _parse_api_keys(name: str, raw: str) -> tuple[str, ...]:
    """Keys, comma-separated: plain keys, or their SHA-256 as ``sha256:<hex>`` (or bare 64 hex digits)."""
    digests = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        hexed = entry.removeprefix("sha256:")
        if _HEX64.fullmatch(hexed):
            digests.append(hexed.lower())
        elif entry.startswith("sha256:"):
            raise ConfigError(f"{name}: a sha256: entry must hold 64 hex digits")
        elif len(entry) < MIN_KEY_LENGTH:
            # Never echo the key; its position is enough to find it.
            raise ConfigError(
                f"{name}: plain keys must be at least {MIN_KEY_LENGTH} characters (a short key can be guessed); "
                f"entry {len(digests) + 1} is {len(entry)}"
            )
        else:
            digests.append(hashlib.sha256(entry.encode()).hexdigest())
    return tuple(digests)


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false), got {raw!r}")


def _parse_hosts(name: str, raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower().rstrip(".") for h in raw.split(",") if h.strip())


def _parse_rate(name: str, raw: str) -> tuple[int, int]:
    """``120/minute`` → (120, 60); the window is second, minute, hour or day."""
    count, sep, window = raw.partition("/")
    seconds = _WINDOWS.get(window.strip().lower().removesuffix("s")) if sep else None
    if seconds is None or not count.strip().isdigit() or int(count) < 1:
        raise ConfigError(f"{name} must look like 120/minute (per second, minute, hour or day), got {raw!r}")
    return int(count), seconds


def _parse_delays(name: str, raw: str) -> tuple[float, ...]:
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    return tuple(_parse_number(name, part, integer=False, minimum=0, maximum=None) for part in parts)


def _parse_webhook_secrets(name: str, raw: str) -> tuple[str, ...]:
    """One or more ``whsec_`` secrets, separated by spaces or commas (several allow rotation)."""
    secrets = tuple(part for part in raw.replace(",", " ").split() if part)
    for secret in secrets:
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not secret.startswith("whsec_") or len(key) < 16:
            # Never echo the value: it is a secret.
            raise ConfigError(f"{name} must hold whsec_ secrets with a base64 key of at least 16 bytes")
    return secrets


def _parse_media_secret(name: str, raw: str) -> str:
    if len(raw) < MIN_MEDIA_SECRET_LENGTH:
        # Never echo the value: it is a secret.
        raise ConfigError(f"{name} must be at least {MIN_MEDIA_SECRET_LENGTH} characters (openssl rand -hex 32)")
    return raw


def _parse_model_name(name: str, raw: str) -> str:
    owner_name = raw.partition(":")[0]
    if owner_name.count("/") != 1 or not all(owner_name.split("/")):
        raise ConfigError(f"{name} must look like owner/name or owner/name:version, got {raw!r}")
    return raw


def _parse_model_id(name: str, raw: str) -> str:
    owner_name, sep, version = raw.partition(":")
    if not sep or owner_name.count("/") != 1 or not version or not all(owner_name.split("/")):
        raise ConfigError(f"{name} must look like owner/name:version, got {raw!r}")
    return raw


def _text(name: str, raw: str) -> str:
    return raw


@dataclass(frozen=True)
class Kind:
    """What one variable accepts: how its text becomes a value, and how the reference says so."""

    parse: Callable[[str, str], Any]
    #: What the reference shows in its "accepts" column (Markdown).
    accepts: str


def _either(items: Iterable[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    *rest, last = items
    return f"{', '.join(rest)} or {last}" if rest else last


def _number_text(value: float) -> str:
    """``1073741824`` rather than ``1.07374e+09``; ``0.5`` rather than ``0.500000``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bounds(minimum: float, maximum: float | None) -> str:
    low = _number_text(minimum)
    return f"{low} to {_number_text(maximum)}" if maximum is not None else f"≥ {low}"


def number(minimum: float, maximum: float | None = None) -> Kind:
    """A number (seconds, for times) of at least ``minimum`` and, if given, at most ``maximum``."""
    return Kind(
        lambda name, raw: _parse_number(name, raw, integer=False, minimum=minimum, maximum=maximum),
        f"number {_bounds(minimum, maximum)}",
    )


def whole(minimum: float, maximum: float | None = None) -> Kind:
    """A whole number of at least ``minimum`` and, if given, at most ``maximum``."""
    return Kind(
        lambda name, raw: int(_parse_number(name, raw, integer=True, minimum=minimum, maximum=maximum)),
        f"whole number {_bounds(minimum, maximum)}",
    )


def choice(*choices: str, fold: Callable[[str], str] | None = None) -> Kind:
    """One of ``choices``; ``fold`` (``str.upper``, ``str.lower``) makes the match case-blind."""
    return Kind(
        lambda name, raw: _parse_choice(name, fold(raw) if fold else raw, choices),
        _either(f"`{c}`" for c in choices) + (" (any case)" if fold else ""),
    )


def url(*schemes: str) -> Kind:
    """A URL with one of ``schemes``; a trailing slash of an http(s) URL is dropped."""
    return Kind(lambda name, raw: _parse_url(name, raw, schemes), _either(f"`{s}://`" for s in schemes) + " URL")


TEXT = Kind(_text, "text")
FLAG = Kind(_parse_bool, "`1` or `0` (also true/false, yes/no, on/off)")
KEYS = Kind(_parse_api_keys, "keys or `sha256:` digests, comma-separated")
HOSTS = Kind(_parse_hosts, "`host` or `host:port`, comma-separated")
RATE = Kind(_parse_rate, "`N/second`, `N/minute`, `N/hour` or `N/day`")
DELAYS = Kind(_parse_delays, "numbers ≥ 0, comma-separated")
WEBHOOK_SECRETS = Kind(_parse_webhook_secrets, "`whsec_<base64>` secrets, space- or comma-separated")
MEDIA_SECRET = Kind(_parse_media_secret, f"text of {MIN_MEDIA_SECRET_LENGTH}+ characters")
MODEL_NAME = Kind(_parse_model_name, "`owner/name` or `owner/name:version`")
MODEL_ID = Kind(_parse_model_id, "`owner/name:version`")


# --- The declarations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A group of settings in the reference and in ``.env.example``."""

    title: str
    #: A sentence or two under the title in the reference.
    intro: str = ""


SECRETS = Section("Secrets", "Never logged, never returned, never part of a printed `Settings`.")
MODE = Section("Mode and backends")
MEDIA = Section("Media", "Videos the service makes or keeps (`VIDEO_BACKEND=replicate` or `local`).")
PLACES = Section("Where things are")
CAPTION = Section("Caption (Replicate CLIP Interrogator)")
VIDEO = Section("Video (Pika) and timing")
HTTP = Section("Outbound HTTP and retries")
RECOVERY = Section("Recovery")
EDGE = Section("The web edge and records")
PROCESSES = Section(
    "Processes",
    "Read from the environment only, by `gunicorn.conf.py`, the `Procfile` and `launch.py`, not by the "
    "service's settings. `make run` passes on the values from `.env`; a `gunicorn` started directly does not "
    "read `.env`.",
)
SECTIONS = (SECRETS, MODE, MEDIA, PLACES, CAPTION, VIDEO, HTTP, RECOVERY, EDGE, PROCESSES)


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default, what it accepts, and one line of doc."""

    name: str
    default: Any
    kind: Kind
    doc: str
    section: Section
    secret: bool = False
    #: How the default reads in the reference beyond the value itself (``4 days``, ``make run: …``).
    note: str = ""
    #: The :class:`Settings` attribute it sets; None for a variable another program reads.
    attr: str | None = None


_VARIABLE = "i2v.variable"


def setting(
    name: str, default: Any, kind: Kind, doc: str, *, section: Section, secret: bool = False, note: str = ""
) -> Any:
    """Declare a :class:`Settings` field read from the variable ``name``.

    Args:
        name: the environment variable.
        default: the value when the variable is unset or empty.
        kind: what it accepts (``number(0)``, ``choice("a", "b")``, ``TEXT``, ...).
        doc: what it means, for the reference and ``.env.example`` (Markdown, a sentence or two).
        section: where the reference lists it.
        secret: kept out of ``repr`` and masked in every log line.
        note: how the default reads beyond its value (``4 days``, ```make run`: `development```).
    """
    variable = Variable(name, default, kind, doc, section, secret, note)
    return field(default=default, repr=not secret, metadata={_VARIABLE: variable})


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process. Each field declares its variable once.

    To add a setting, add one field here with :func:`setting`, then run ``python -m config --write``.
    """

    # fmt: off
    # --- Secrets
    replicate_api_token: str = setting(
        "REPLICATE_API_TOKEN", "", TEXT, section=SECRETS, secret=True,
        doc="Replicate API token. A worker needs it when `CAPTION_BACKEND` or `VIDEO_BACKEND` is `replicate`.",
    )
    pikapi_bearer_token: str = setting(
        "PIKAPI_BEARER_TOKEN", "", TEXT, section=SECRETS, secret=True,
        doc="pikapikapika.io bearer token. A worker needs it when `VIDEO_BACKEND=pika`.",
    )
    game_api_key: str = setting(
        "GAME_API_KEY", "", TEXT, section=SECRETS, secret=True,
        doc="Sent as `x-api-key`, only to the exact callback URL that `CALLBACK_API_URL` builds for the request "
        "(never to a per-request `callback_url`, never on a redirect, never over plain `http://` off the machine "
        "outside development). A production worker needs it. Under `make run`, setting it sends callbacks to "
        "`CALLBACK_API_URL` instead of the built-in receiver.",
    )
    #: SHA-256 hex digests of the accepted API keys (plain keys are hashed at load time).
    api_key_digests: tuple[str, ...] = setting(
        "I2V_API_KEYS", (), KEYS, section=SECRETS, secret=True,
        doc="API keys accepted on `/api/v1/*` (callers send `Authorization: Bearer <key>`). Each entry is a "
        "plain key of at least 16 characters, or its SHA-256 as `sha256:<64 hex>` or as 64 bare hex digits; "
        "keys are kept only as digests. Without keys (and without `I2V_AUTH_DISABLED=1`) `/api/v1/*` answers "
        "503; `make run` then disables authentication.",
    )
    #: SHA-256 hex digests of the keys that open the dashboard at /rq (never the API keys).
    admin_key_digests: tuple[str, ...] = setting(
        "I2V_ADMIN_KEYS", (), KEYS, section=SECRETS, secret=True,
        doc="Keys that open rq-dashboard at `/rq` (API keys do not), in the same forms as `I2V_API_KEYS`. "
        "Without them, `RQ_DASHBOARD=1` mounts a dashboard that opens to nobody (development without "
        "authentication excepted).",
    )
    media_name_secret: str = setting(
        "MEDIA_NAME_SECRET", "", MEDIA_SECRET, section=SECRETS, secret=True, note="a random key kept in Redis",
        doc="HMAC key of video names (`openssl rand -hex 32`). Each name is stored in its record, so changing "
        "the secret never breaks a URL already sent. Unset, the first worker makes a random key and keeps it "
        "in Redis for all.",
    )
    callback_signing_secrets: tuple[str, ...] = setting(
        "CALLBACK_SIGNING_SECRET", (), WEBHOOK_SECRETS, section=SECRETS, secret=True, note="unsigned",
        doc="Standard Webhooks signing secrets; each key must decode to at least 16 bytes, and several allow "
        "rotation. When set, every callback carries a `webhook-signature` with one signature per secret.",
    )

    # --- Mode and backends
    env: str = setting(
        "I2V_ENV", "production", choice("production", "development"), section=MODE,
        note="`make run`: `development`",
        doc="See [Modes](#modes-and-backends): development adds `/dev/*`, allows the local backends and needs "
        "no `GAME_API_KEY`.",
    )
    caption_backend: str = setting(
        "CAPTION_BACKEND", "replicate", choice("replicate", "local"), section=MODE, note="`make run`: by tokens",
        doc="`replicate` (the CLIP Interrogator) or `local` (a caption from the image's own properties).",
    )
    video_backend: str = setting(
        "VIDEO_BACKEND", "pika", choice("pika", "replicate", "local"), section=MODE, note="`make run`: by tokens",
        doc="`pika`, `replicate` (`REPLICATE_VIDEO_MODEL`) or `local` (a zoom-and-pan MP4 of the image).",
    )
    allow_local_backends: bool = setting(
        "ALLOW_LOCAL_BACKENDS", False, FLAG, section=MODE,
        doc="`1` allows the `local` backends in production (offline stand-ins, not provider results).",
    )
    replicate_video_model: str = setting(
        "REPLICATE_VIDEO_MODEL", "wan-video/wan-2.2-i2v-fast", MODEL_NAME, section=MODE,
        doc="The Replicate image-to-video model: its latest version, or a pinned one.",
    )

    # --- Media made or kept by the service (local videos, Replicate outputs)
    public_base_url: str = setting(
        "PUBLIC_BASE_URL", "", url("http", "https"), section=MEDIA,
        note="development: `http://127.0.0.1:$PORT`",
        doc="The service's public address, for `/media/…` URLs. Required unless `VIDEO_BACKEND=pika`.",
    )
    media_store: str = setting(
        "MEDIA_STORE", "disk", choice("disk", "redis"), section=MEDIA,
        doc="`disk` (`MEDIA_DIR`, web and worker on one machine) or `redis` (processes without a shared disk, "
        "Heroku).",
    )
    media_dir: str = setting(
        "MEDIA_DIR", "instance/media", TEXT, section=MEDIA,
        doc="Directory of the disk store, relative to the working directory.",
    )
    media_ttl: int = setting(
        "MEDIA_TTL", 4 * 24 * 3600, whole(60), section=MEDIA, note="4 days",
        doc="Seconds a stored video is kept; longer than the callback retry window (about 3.1 days).",
    )
    image_max_bytes: int = setting(
        "IMAGE_MAX_BYTES", 20 * 1024 * 1024, whole(1024), section=MEDIA, note="20 MiB",
        doc="Largest image the local backends download.",
    )
    upload_max_bytes: int = setting(
        "UPLOAD_MAX_BYTES", 20 * 1024 * 1024, whole(1024, 1024 * 1024 * 1024), section=MEDIA, note="20 MiB",
        doc="Largest image `POST /api/v1/uploads` takes (multipart framing may add 64 KiB). `MAX_BODY_BYTES` still "
        "caps every other route.",
    )
    upload_ttl: int = setting(
        "UPLOAD_TTL", 24 * 3600, whole(60), section=MEDIA, note="24 hours",
        doc="Seconds an uploaded image is kept and served.",
    )
    upload_quota_bytes: int = setting(
        "UPLOAD_QUOTA_BYTES", 200 * 1024 * 1024, whole(1024), section=MEDIA, note="200 MiB",
        doc="Bytes of uploads one API key may hold; an upload over it gets 413. Each upload counts until it expires.",
    )
    upload_read_deadline: float = setting(
        "UPLOAD_READ_DEADLINE", 20.0, number(1, 600), section=MEDIA,
        doc="Seconds an upload's body may take to arrive; slower gets 408. Keep it under gunicorn's 25 s timeout.",
    )
    local_video_seconds: float = setting(
        "LOCAL_VIDEO_SECONDS", 4.0, number(0.5, 30), section=MEDIA, doc="Length of a local video.",
    )
    local_video_fps: int = setting(
        "LOCAL_VIDEO_FPS", 24, whole(1, 60), section=MEDIA, doc="Frame rate of a local video.",
    )

    # --- Where things live
    redis_url: str = setting(
        "REDIS_URL", "redis://127.0.0.1:6379/0", url("redis", "rediss", "unix"), section=PLACES,
        doc="The one Redis of the deployment. `make run` starts its own Redis when this is unset.",
    )
    #: Folded into ``redis_url`` (as ``ssl_cert_reqs``) by :func:`settings_from`.
    redis_ssl_cert_reqs: str = setting(
        "REDIS_SSL_CERT_REQS", "", choice("required", "optional", "none"), section=PLACES,
        doc="Added as `ssl_cert_reqs` to a `rediss://` `REDIS_URL` that has none. `none` accepts a self-signed "
        "certificate (Heroku Redis).",
    )
    queue_name: str = setting("I2V_QUEUE", "i2v", TEXT, section=PLACES, doc="RQ queue name.")
    pikapi_base_url: str = setting(
        "PIKAPI_BASE_URL", "https://api.pikapikapika.io/web", url("http", "https"), section=PLACES,
        doc="Pika API base. The service POSTs to `{base}/generate` and GETs `{base}/jobs/{id}`.",
    )
    replicate_base_url: str = setting(
        "REPLICATE_BASE_URL", "", url("http", "https"), section=PLACES, note="`https://api.replicate.com`",
        doc="Replicate API base, passed to the official `replicate` client, which also reads the variable itself.",
    )
    callback_api_url: str = setting(
        "CALLBACK_API_URL", "https://game-api.virtuals.io/requests", url("http", "https"), section=PLACES,
        note="`make run` without `GAME_API_KEY`: the built-in receiver",
        doc="Callback base, to which `/{request_id}/callback` is appended, or a full template containing "
        "`{request_id}`. Outside development it must be `https://` (plain `http://` only to a loopback host), "
        "as every callback carries `GAME_API_KEY`: processes refuse to start otherwise.",
    )
    callback_url_allowlist: tuple[str, ...] = setting(
        "CALLBACK_URL_ALLOWLIST", (), HOSTS, section=PLACES,
        doc="Hosts that a request's own `callback_url` may name. When empty, that field is refused with 422.",
    )
    image_host_allowlist: tuple[str, ...] = setting(
        "IMAGE_HOST_ALLOWLIST", (), HOSTS, section=PLACES, note="`make run`: `$HOST,localhost`",
        doc="Hosts exempt from the public-address rules for `image_id` and for downloads, for local set-ups. "
        "If you set your own list under `make run`, include `127.0.0.1` to keep using the sample image.",
    )
    redoc_js_url: str = setting(
        "REDOC_JS_URL", "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js", url("http", "https"),
        section=PLACES, doc="Script that the `/redoc` page loads (`/docs` needs no internet; `/redoc` does).",
    )

    # --- Captioning (Replicate CLIP Interrogator)
    replicate_model_id: str = setting(
        "REPLICATE_MODEL_ID", DEFAULT_REPLICATE_MODEL_ID, MODEL_ID, section=CAPTION, doc="The captioning model.",
    )
    clip_model_name: str = setting(
        "CLIP_MODEL_NAME", "ViT-L-14/openai", choice(*CLIP_MODEL_NAMES), section=CAPTION,
        doc="The CLIP model the interrogator uses.",
    )
    clip_mode: str = setting(
        "CLIP_MODE", "best", choice(*CLIP_MODES), section=CAPTION,
        doc="`best` takes 10-20 s, `fast` 1-2 s.",
    )
    caption_timeout: float = setting(
        "CAPTION_TIMEOUT", 300.0, number(1), section=CAPTION,
        doc="Time from the start of captioning until `caption_failed`; the prediction is then canceled.",
    )
    caption_poll_interval: float = setting(
        "CAPTION_POLL_INTERVAL", 1.0, number(0.01), section=CAPTION, doc="Time between reads of the prediction.",
    )

    # --- Video generation (Pika through pikapikapika.io), and the timing of every video backend
    pika_model: str = setting("PIKA_MODEL", "1.5", TEXT, section=VIDEO, doc="`model`, sent as a string.")
    pika_frame_rate: int = setting(
        "PIKA_FRAME_RATE", 24, whole(1, 24), section=VIDEO, doc="`options.frameRate`.",
    )
    pika_motion: int = setting(
        "PIKA_MOTION", 2, whole(1, 4), section=VIDEO, doc="`options.parameters.motion`.",
    )
    pika_guidance_scale: float = setting(
        "PIKA_GUIDANCE_SCALE", 16.0, number(5, 25), section=VIDEO, doc="`options.parameters.guidanceScale`.",
    )
    pika_negative_prompt: str = setting(
        "PIKA_NEGATIVE_PROMPT", "", TEXT, section=VIDEO,
        doc="`options.parameters.negativePrompt`; not sent when empty.",
    )
    pika_aspect_ratio: str = setting(
        "PIKA_ASPECT_RATIO", "", choice(*PIKA_ASPECT_RATIOS), section=VIDEO,
        doc="`options.aspectRatio`; not sent when empty.",
    )
    pika_max_concurrency: int = setting(
        "PIKA_MAX_CONCURRENCY", 0, whole(0), section=VIDEO,
        doc="Most Pika generations in flight at once across all workers and machines (`VIDEO_BACKEND=pika` "
        "only). `0`: no cap beyond the number of workers. See [why not RQ's RateLimit](api.md#limits).",
    )
    initial_wait_time: float = setting(
        "INITIAL_WAIT_TIME", 60.0, number(0), section=VIDEO,
        doc="Wait after the Pika submission before the first poll (the original waited 300 s; see "
        "[why](#why-initial_wait_time-is-60-s-not-the-original-300-s)).",
    )
    max_check_time: float = setting(
        "MAX_CHECK_TIME", 420.0, number(0), section=VIDEO,
        doc="How long polling goes on after the initial wait. A request gives up "
        "`INITIAL_WAIT_TIME + MAX_CHECK_TIME` after the submission (`MAX_CHECK_TIME=660` keeps the original's "
        "720 s).",
    )
    poll_interval: float = setting("POLL_INTERVAL", 10.0, number(0.01), section=VIDEO, doc="Time between polls.")

    # --- Outbound HTTP: timeouts of every call, and how long transient provider errors are retried
    http_connect_timeout: float = setting(
        "HTTP_CONNECT_TIMEOUT", 5.0, number(0.1), section=HTTP,
        doc="Connect timeout of every provider, download and callback call.",
    )
    http_read_timeout: float = setting(
        "HTTP_READ_TIMEOUT", 30.0, number(0.1), section=HTTP,
        doc="Read timeout of every provider, download and callback call.",
    )
    download_deadline: float = setting(
        "DOWNLOAD_DEADLINE", 60.0, number(1), section=HTTP,
        doc="Seconds a whole image download may take, redirects included. The copy of a Replicate video gets "
        "five times as long (300 s by default).",
    )
    provider_retry_budget: float = setting(
        "PROVIDER_RETRY_BUDGET", 60.0, number(0), section=HTTP,
        doc="How long the caption step retries transient Replicate errors in all. Half of it applies to video "
        "submission errors.",
    )
    retry_base_delay: float = setting(
        "RETRY_BASE_DELAY", 2.0, number(0.01), section=HTTP,
        doc="First back-off step, doubled on each retry, at most 30 s. A provider's `Retry-After` takes "
        "precedence.",
    )
    callback_retry_delays: tuple[float, ...] = setting(
        "CALLBACK_RETRY_DELAYS", (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400), DELAYS, section=HTTP,
        doc="Waits before callback retries 1, 2, …. The default allows 10 attempts over about 3.1 days.",
    )

    # --- Recovery: how often the janitor looks, and how old a record must be before it does
    janitor_interval: float = setting(
        "JANITOR_INTERVAL", 15.0, number(0.1), section=RECOVERY, doc="Time between janitor sweeps.",
    )
    janitor_grace: float = setting(
        "JANITOR_GRACE", 30.0, number(0), section=RECOVERY, doc="The janitor leaves records younger than this alone.",
    )
    worker_heartbeat_interval: int = setting(
        "WORKER_HEARTBEAT_INTERVAL", 30, whole(1, 600), section=RECOVERY,
        doc="Worker heartbeat. A running job counts as abandoned 15 s after a missed heartbeat (so a dead "
        "worker's request resumes within about a minute); each beat costs CPU, which is what limits requests "
        "in flight per machine.",
    )
    worker_threads: int = setting(
        "WORKER_THREADS", 100, whole(1, 1000), section=RECOVERY,
        doc="Requests one worker process runs at once, each in its own thread. The web's ETA counts processes "
        "times this, so set the same value on web and worker.",
    )
    worker_heavy_steps: int = setting(
        "WORKER_HEAVY_STEPS", 2, whole(1, 64), section=RECOVERY,
        doc="Image downloads, video copies and local encodes one worker process runs at once (their memory "
        "peaks must fit the dyno).",
    )

    # --- Who may call, and how much; records and logs
    auth_disabled: bool = setting(
        "I2V_AUTH_DISABLED", False, FLAG, section=EDGE, note="`make run` without keys: `1`",
        doc="`1` lets anyone use `/api/v1/*`; a warning is logged at start. Local runs only: the web refuses to "
        "listen on a non-loopback address with it.",
    )
    #: Whether I2V_AUTH_DISABLED=1 or development mode may listen on a non-loopback address.
    allow_public_unsafe: bool = setting(
        "I2V_ALLOW_PUBLIC_UNSAFE", False, FLAG, section=EDGE,
        doc="`1` lets the web listen on a non-loopback address with `I2V_AUTH_DISABLED=1` or "
        "`I2V_ENV=development` (a container that must bind 0.0.0.0 behind a private network). Risk: whoever "
        "reaches the port can use the API, `/dev/*` and `/rq`.",
    )
    #: (requests, window seconds) per API key, or None for no limit.
    rate_limit: tuple[int, int] | None = setting(
        "RATE_LIMIT", None, RATE, section=EDGE, note="no limit",
        doc="Requests to `/api/*` per API key, as `120/minute` (fixed windows). Excess requests get 429 with "
        "`Retry-After`.",
    )
    max_queued: int = setting(
        "MAX_QUEUED", 10000, whole(1), section=EDGE,
        doc="New submissions get 503 (`Retry-After: 60`) while at least this many jobs wait in the queue.",
    )
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", 64 * 1024, whole(256), section=EDGE, doc="Larger request bodies get 413.",
    )
    rq_dashboard: bool = setting(
        "RQ_DASHBOARD", False, FLAG, section=EDGE,
        doc="`1` mounts rq-dashboard at `/rq`, for `I2V_ADMIN_KEYS` (HTTP Basic with any user name and a key "
        "as password, or Bearer).",
    )
    rq_dashboard_actions: bool = setting(
        "RQ_DASHBOARD_ACTIONS", False, FLAG, section=EDGE,
        doc="`1` lets the dashboard requeue, delete, empty and compact, as same-origin POSTs only (refused "
        "with 403 otherwise).",
    )
    record_ttl: int = setting(
        "RECORD_TTL", 7 * 24 * 3600, whole(60), section=EDGE, note="7 days",
        doc="Seconds a record is kept after its last write.",
    )
    log_level: str = setting(
        "LOG_LEVEL", "INFO", choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper), section=EDGE,
        doc="Least severe log lines written.",
    )
    log_format: str = setting(
        "LOG_FORMAT", "json", choice(*LOG_FORMATS, fold=str.lower), section=EDGE,
        note="`make run` in a terminal: `text`",
        doc="`json`: one JSON object per line, for a log platform. `text`: one readable line per event (time, "
        "level, logger, message, then `request_id=… stage=…` and other fields as `key=value`). Both mask "
        "secrets alike.",
    )
    # fmt: on

    @property
    def generation_deadline(self) -> float:
        """Seconds after the Pika submission at which a request gives up."""
        return self.initial_wait_time + self.max_check_time

    @property
    def job_timeout(self) -> int:
        """The RQ job timeout: the whole pipeline, with room for captioning and delivery.

        Derived from the timing settings so that RQ's 180 s default never cuts a wait short.
        """
        # Throttled submissions may wait up to one generation deadline before the real one starts.
        waits = self.caption_timeout + 2 * self.provider_retry_budget + 2 * self.generation_deadline
        # An image download (local backends) or a video copy (Replicate) may use its whole deadline.
        waits += self.video_download_deadline
        return math.ceil(waits + 6 * (self.http_connect_timeout + self.http_read_timeout) + 60)

    @property
    def video_download_deadline(self) -> float:
        """Seconds the copy of a provider's video may take: five image deadlines (300 s by default)."""
        return 5 * self.download_deadline

    @property
    def development(self) -> bool:
        """Whether ``I2V_ENV=development`` (local conveniences such as the callback receiver)."""
        return self.env == "development"

    def unsafe_modes(self) -> list[str]:
        """The settings that open the API, ``/dev/*`` and ``/rq`` to anyone who can connect."""
        modes = []
        if self.auth_disabled:
            modes.append("I2V_AUTH_DISABLED=1")
        if self.development:
            modes.append("I2V_ENV=development")
        return modes

    def public_listener_problem(self, hosts: Iterable[str]) -> str | None:
        """Why this process must not listen on ``hosts`` (addresses or names), or None if it may.

        An unsafe mode is fine on loopback (``make run``); anywhere else it needs
        ``I2V_ALLOW_PUBLIC_UNSAFE=1``, an explicit acceptance of the risk.
        """
        modes = self.unsafe_modes()
        if not modes or self.allow_public_unsafe:
            return None
        public = sorted({host for host in hosts if not is_loopback(host)})
        if not public:
            return None
        return (
            f"refusing to listen on {', '.join(public)} with {' and '.join(modes)}: that opens the API, "
            "/dev and /rq to anyone who can connect. Listen on 127.0.0.1 (HOST), turn the mode off, or set "
            "I2V_ALLOW_PUBLIC_UNSAFE=1 if a private network really is the only way in"
        )

    def missing_worker_tokens(self) -> list[str]:
        """Names of the secrets a worker needs for the configured backends but does not have."""
        needed: dict[str, str] = {}
        if "replicate" in (self.caption_backend, self.video_backend):
            needed["REPLICATE_API_TOKEN"] = self.replicate_api_token
        if self.video_backend == "pika":
            needed["PIKAPI_BEARER_TOKEN"] = self.pikapi_bearer_token
        if not self.development:
            needed["GAME_API_KEY"] = self.game_api_key
        return [name for name, value in needed.items() if not value]


#: Variables that other programs read (gunicorn.conf.py, the Procfile, launch.py, the HTTP clients):
#: declared here for the reference and ``.env.example`` only, never parsed into :class:`Settings`.
# fmt: off
OTHER_VARIABLES = (
    Variable(
        "HTTP_PROXY", "", url("http", "https"), section=HTTP,
        doc="Proxy of outbound `http://` calls, honoured by every outbound client (Pika, GAME, downloads, and "
        "Replicate, whose client gets proxy transports mounted for them).",
    ),
    Variable("HTTPS_PROXY", "", url("http", "https"), section=HTTP, doc="Proxy of outbound `https://` calls, alike."),
    Variable("NO_PROXY", "", HOSTS, section=HTTP, doc="Hosts that outbound calls reach without a proxy."),
    Variable(
        "PORT", 8000, whole(1, 65535), section=PROCESSES,
        doc="Port of the web process (also used for the development `PUBLIC_BASE_URL`).",
    ),
    Variable(
        "HOST", "0.0.0.0", TEXT, section=PROCESSES, note="`make run`: `127.0.0.1`",
        doc="Address the web process binds.",
    ),
    Variable(
        "WEB_CONCURRENCY", 2, whole(1), section=PROCESSES,
        doc="gunicorn worker processes (Heroku sets it by dyno size).",
    ),
    Variable(
        "GUNICORN_THREADS", 1, whole(1), section=PROCESSES,
        doc="Threads per gunicorn worker. `1` is gunicorn's sync worker: a request only waits on one Redis round "
        "trip, and with threads a kept-alive connection stays with a busy process, which lengthens the tail "
        "(the ingest benchmark measures both). Put a buffering proxy in front (Heroku's router, nginx).",
    ),
    Variable(
        "FORWARDED_ALLOW_IPS", "127.0.0.1", TEXT, section=PROCESSES,
        doc="Proxies whose `X-Forwarded-*` headers gunicorn trusts (`*` behind Heroku's router).",
    ),
    Variable(
        "WORKER_PROCESSES", 2, whole(1), section=PROCESSES,
        doc="Worker processes in the `worker` process's `rq worker-pool`; each runs up to `WORKER_THREADS` "
        "requests at once.",
    ),
    Variable(
        "PROMETHEUS_MULTIPROC_DIR", "", TEXT, section=PROCESSES, note="a new temporary directory",
        doc="Where gunicorn's workers keep their metric files for `/metrics`. Emptied when gunicorn starts: "
        "point it only at a directory of its own.",
    ),
    Variable(
        "I2V_DOTENV", "1", choice("1", "0"), section=PROCESSES,
        doc="`0` makes `launch.py` and the service processes skip `.env` (the tests use it). Set it in the "
        "environment, not in `.env`.",
    ),
)
# fmt: on


@functools.cache
def settings_variables() -> tuple[Variable, ...]:
    """The variables of :class:`Settings`, in declaration order, each with its attribute."""
    return tuple(dataclasses.replace(f.metadata[_VARIABLE], attr=f.name) for f in dataclasses.fields(Settings))


def all_variables() -> list[Variable]:
    """Every variable the service or its processes read: the settings, then the others."""
    return [*settings_variables(), *OTHER_VARIABLES]


#: Every variable name, for documentation checks.
VARIABLES = frozenset(v.name for v in all_variables())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches only this machine; unknown names do not."""
    host = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host:
        return False  # an empty host means every address
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def mask_url(url: str) -> str:
    """``url`` with its password (and a user name given alone, as some Redis URLs do) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None and not parts.username:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "***"  # unparseable: it may hold anything
    user = parts.username if parts.password is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user or ''}:***@{host}" if user else f":***@{host}"))


def url_secrets(url: str) -> tuple[str, ...]:
    """The secret parts of a URL (its password, or a user name given alone), for log masking."""
    try:
        parts = urlsplit(url)
        found = parts.password if parts.password is not None else parts.username
    except ValueError:
        return ()
    return (found,) if found else ()


def is_loopback_host(host: str | None) -> bool:
    """Whether a URL's host is this machine: ``localhost`` or a loopback address literal."""
    name = (host or "").strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plain_http_off_machine(url: str) -> bool:
    """Whether ``url`` is plain ``http://`` to another machine: no secret may travel to it in production."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback_host(parts.hostname)


# --- Loading ----------------------------------------------------------------------------------------


class _Declared(marshmallow.fields.Field):
    """A marshmallow field that reads a variable's text as its :class:`Kind` says."""

    def __init__(self, *, variable: str, kind: Kind, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variable = variable
        self.kind = kind

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            return self.kind.parse(self.variable, value)
        except ConfigError as exc:
            raise marshmallow.ValidationError(str(exc)) from None


class _Environment(Env):
    """environs' reader over one mapping of variables, where unset, empty and blank mean the default."""

    def __init__(self, source: Mapping[str, str]) -> None:
        super().__init__(eager=True)
        self.source = source
        self.add_parser_from_field("declared", _Declared)

    def _get_value(self, env_key: str, default: Any) -> Any:
        # environs reads os.environ; the service reads the mapping it is given (tests pass their own),
        # and an empty value (an empty line in .env) counts as not given.
        raw = self.source.get(env_key)
        return raw.strip() if raw is not None and raw.strip() else default

    def given(self, name: str) -> bool:
        """Whether ``name`` has a value (not unset, not empty)."""
        return self._get_value(name, None) is not None


def settings_from(env: Mapping[str, str]) -> Settings:
    """Build settings from a mapping of variables; unset or empty variables take the defaults.

    Raises:
        ConfigError: a value is malformed or out of range, or settings contradict each other; the
            message names the variable.
    """
    reader = _Environment(env)
    values: dict[str, Any] = {}
    for variable in settings_variables():
        try:
            values[str(variable.attr)] = reader.declared(
                variable.name, variable.default, variable=variable.name, kind=variable.kind
            )
        except EnvValidationError as exc:
            raise ConfigError(exc.error_messages[0]) from None
    if values["redis_ssl_cert_reqs"]:
        values["redis_url"] = _with_cert_reqs(values["redis_url"], values["redis_ssl_cert_reqs"])
    if values["env"] == "development" and not reader.given("PUBLIC_BASE_URL"):
        values["public_base_url"] = f"http://127.0.0.1:{reader.source.get('PORT') or '8000'}"
    settings = Settings(**values)
    _check(settings)
    return settings


def _with_cert_reqs(redis_url: str, reqs: str) -> str:
    """Add ``ssl_cert_reqs`` to a ``rediss://`` URL (managed Redis with self-signed certificates)."""
    if not redis_url.startswith("rediss://") or "ssl_cert_reqs=" in redis_url:
        return redis_url
    return f"{redis_url}{'&' if '?' in redis_url else '?'}ssl_cert_reqs={reqs}"


def _check(settings: Settings) -> None:
    """The rules that join several settings.

    Raises:
        ConfigError: the settings cannot run together; the message names the variables.
    """
    if not settings.development and plain_http_off_machine(settings.callback_api_url):
        raise ConfigError(
            "CALLBACK_API_URL must be https:// in production (plain http:// only to a loopback host): "
            "every callback carries GAME_API_KEY"
        )
    if settings.video_backend != "pika" and not settings.public_base_url:
        raise ConfigError(
            f"PUBLIC_BASE_URL must be set: VIDEO_BACKEND={settings.video_backend} serves videos from this service"
        )
    local = [
        n
        for n, v in (("CAPTION_BACKEND", settings.caption_backend), ("VIDEO_BACKEND", settings.video_backend))
        if v == "local"
    ]
    if local and not settings.development and not settings.allow_local_backends:
        raise ConfigError(
            f"{' and '.join(local)}=local in production needs ALLOW_LOCAL_BACKENDS=1 "
            "(local backends make offline stand-ins, not provider results)"
        )


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Read settings from ``env`` (default: the process environment, after loading ``.env``).

    Values already in the environment win over `.env`; ``I2V_DOTENV=0`` skips the file (tests).
    The file goes into the process environment, not only into the settings: the provider clients
    read some variables themselves (``REPLICATE_BASE_URL``, the proxy variables).
    """
    if env is None:
        if dotenv and os.environ.get("I2V_DOTENV", "1") != "0":
            load_dotenv(find_dotenv(usecwd=True), override=False)
        env = os.environ
    return settings_from(env)


#: The settings this process loaded (see load_or_exit); a forked child inherits them.
_process_settings: Settings | None = None


def load_or_exit(process: str, *, provider_tokens: bool = False) -> Settings:
    """The settings of this process: loaded from the environment (and `.env`) on first use, then kept.

    Every process (web, worker, janitor, the Flask CLI) starts with this, so a process loads its
    settings once however many of its parts ask for them.

    Args:
        process: the process's name in messages (``web``, ``worker``, ``janitor``).
        provider_tokens: also require the tokens the configured backends need (a worker at start).

    Raises:
        SystemExit: a setting is invalid, or a required token is missing; the message names the
            process and the variable, e.g. ``i2v web: MAX_CHECK_TIME must be a number, got 'soon'``.
    """
    global _process_settings
    if _process_settings is None:
        try:
            _process_settings = load_settings()
        except ConfigError as exc:
            raise SystemExit(f"i2v {process}: {exc}") from None
    if provider_tokens and (missing := _process_settings.missing_worker_tokens()):
        raise SystemExit(f"i2v {process}: refusing to start, missing {', '.join(missing)}")
    return _process_settings


def known_secrets(settings: Settings) -> tuple[str, ...]:
    """Every secret value of ``settings`` long enough to mask without garbling ordinary text."""
    values: list[str] = list(url_secrets(settings.redis_url))
    for variable in settings_variables():
        if variable.secret:
            value = getattr(settings, str(variable.attr))
            values.extend(value if isinstance(value, tuple) else [value])
    return tuple(s for s in values if isinstance(s, str) and len(s) >= 4)


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``, also where JSON escaped one of its characters."""
    for secret in secrets:
        text = text.replace(secret, "***")
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, "***")
    return text


# --- The reference and .env.example, made from the declarations ----------------------------------

ROOT = Path(__file__).resolve().parent
WRITE_COMMAND = "python -m config --write"
REFERENCE_BEGIN = f"<!-- settings reference: made by `{WRITE_COMMAND}` from config.py; edit the declarations -->"
REFERENCE_END = "<!-- end of settings reference -->"
ENV_EXAMPLE_HEADER = f"""\
# i2v settings. Copy to .env if you need any; `make run` works with no .env at all (development mode,
# embedded Redis, offline backends, no authentication). Values in the environment win over this file.
# Unset or empty variables take their defaults (shown commented out). Times are in seconds.
# A malformed value stops the process at start with a message naming the variable. See docs/configuration.md.
# Keep non-secret lines commented unless you mean to set them: `make run` fills in only what is unset,
# and an empty line such as "IMAGE_HOST_ALLOWLIST=" would count as set.
# Made by `{WRITE_COMMAND}` from the declarations in config.py: edit those, not this file.
"""


def _value_text(value: Any) -> str:
    """A default as it is written in a variable: ``60`` for 60.0, ``1`` for True, lists comma-separated."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_value_text(v) for v in value)
    return str(value)


def _default_cell(variable: Variable) -> str:
    text = _value_text(variable.default)
    shown = f"`{text}`" if text else "—"
    return f"{shown} ({variable.note})" if variable.note else shown


def render_reference() -> str:
    """The per-variable part of ``docs/configuration.md``: one table per section."""
    variables = all_variables()
    parts = [REFERENCE_BEGIN]
    for section in SECTIONS:
        parts.append(f"**{section.title}.**" + (f" {section.intro}" if section.intro else ""))
        rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
        rows += [
            f"| `{v.name}` | {_default_cell(v)} | {v.kind.accepts} | {v.doc} |"
            for v in variables
            if v.section is section
        ]
        parts.append("\n".join(rows))
    parts.append(REFERENCE_END)
    return "\n\n".join(parts)


def _plain(markdown: str) -> str:
    """Markdown as a comment reads it: links become their text, code loses its backticks."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(_plain(text), width=98, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def render_env_example() -> str:
    """``.env.example``: every variable with its doc; secrets empty, the rest commented out at their default."""
    variables = all_variables()
    lines = [ENV_EXAMPLE_HEADER.rstrip("\n")]
    for section in SECTIONS:
        lines += ["", f"# --- {section.title} ".ljust(100, "-")]
        lines += _comment(section.intro) if section.intro else []
        for v in (v for v in variables if v.section is section):
            lines += _comment(v.doc if v.kind is TEXT else f"{v.doc} Accepts {v.kind.accepts}.")
            if v.secret:
                lines.append(f"{v.name}=")
            else:
                # An inline comment after a space and "#" is not part of the value (python-dotenv).
                note = f"  # {_plain(v.note)}" if v.note else ""
                lines.append(f"# {v.name}={_value_text(v.default)}{note}")
    return "\n".join(lines) + "\n"


def _spliced(document: str, reference: str) -> str:
    """``document`` with the part between the reference markers replaced by ``reference``."""
    begin, end = document.find(REFERENCE_BEGIN), document.find(REFERENCE_END)
    if begin < 0 or end < begin:
        raise ConfigError(f"docs/configuration.md lacks the markers {REFERENCE_BEGIN!r} ... {REFERENCE_END!r}")
    return document[:begin] + reference + document[end + len(REFERENCE_END) :]


def generated_files(root: Path = ROOT) -> dict[Path, str]:
    """The files made from the declarations, with the content they should have."""
    docs = root / "docs" / "configuration.md"
    return {
        root / ".env.example": render_env_example(),
        docs: _spliced(docs.read_text(), render_reference()),
    }


def stale_files(root: Path = ROOT) -> list[Path]:
    """The generated files whose content differs from what the declarations make."""
    return [path for path, text in generated_files(root).items() if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    """``python -m config --write`` rewrites the generated files; ``--check`` only says which are stale."""
    parser = argparse.ArgumentParser(prog="python -m config", description=main.__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite .env.example and the reference")
    action.add_argument("--check", action="store_true", help="exit 1 if either is not current")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in generated_files().items():
            path.write_text(text)
        return 0
    stale = stale_files()
    for path in stale:
        print(f"{path.relative_to(ROOT)} is not current: run `{WRITE_COMMAND}`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
