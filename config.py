"""Every setting of the service, read from the environment (and `.env`) and validated once.

Both processes load settings through :func:`load_settings`; a bad value stops the process at start
with a message that names the variable. Secrets are kept out of ``repr`` so that a logged or
printed ``Settings`` never shows a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from dotenv import find_dotenv, load_dotenv

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


def _secret() -> object:
    return field(default="", repr=False)


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process. Field names mirror the variable names."""

    # Secrets: never logged, never in repr.
    pikapi_bearer_token: str = _secret()
    replicate_api_token: str = _secret()
    game_api_key: str = _secret()
    #: HMAC key of media names; unset, the worker makes a random one and keeps it in Redis (names are stored).
    media_name_secret: str = _secret()

    # Mode and backends.
    env: str = "production"
    caption_backend: str = "replicate"
    video_backend: str = "pika"
    allow_local_backends: bool = False
    replicate_video_model: str = "wan-video/wan-2.2-i2v-fast"

    # Media made or kept by the service (local videos, Replicate outputs).
    #: The service's own public address, for media URLs (``http://127.0.0.1:$PORT`` in development).
    public_base_url: str = ""
    media_store: str = "disk"
    media_dir: str = "instance/media"
    media_ttl: int = 4 * 24 * 3600
    image_max_bytes: int = 20 * 1024 * 1024
    local_video_seconds: float = 4.0
    local_video_fps: int = 24

    # Where things live.
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "i2v"
    pikapi_base_url: str = "https://api.pikapikapika.io/web"
    replicate_base_url: str = ""
    callback_api_url: str = "https://game-api.virtuals.io/requests"
    redoc_js_url: str = "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"

    # Captioning (Replicate CLIP Interrogator).
    replicate_model_id: str = DEFAULT_REPLICATE_MODEL_ID
    clip_model_name: str = "ViT-L-14/openai"
    clip_mode: str = "best"
    caption_timeout: float = 300.0
    caption_poll_interval: float = 1.0

    # Video generation (Pika through pikapikapika.io).
    pika_model: str = "1.5"
    pika_frame_rate: int = 24
    pika_motion: int = 2
    pika_guidance_scale: float = 16
    pika_negative_prompt: str = ""
    pika_aspect_ratio: str = ""

    # Timing: a request gives up INITIAL_WAIT_TIME + MAX_CHECK_TIME seconds after its submission.
    initial_wait_time: float = 60.0
    max_check_time: float = 420.0
    poll_interval: float = 10.0

    # Outbound HTTP: timeouts of every call, and how long transient provider errors are retried.
    provider_retry_budget: float = 60.0
    retry_base_delay: float = 2.0
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 30.0
    #: Seconds a whole image download may take (redirects included); a video copy gets 5 times as long.
    download_deadline: float = 60.0

    # Callbacks.
    callback_retry_delays: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    callback_signing_secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Hosts a request may name in its own ``callback_url``; empty means the field is refused.
    callback_url_allowlist: tuple[str, ...] = ()

    # Recovery: how often the janitor looks, and how old a record must be before it does.
    janitor_interval: float = 15.0
    worker_heartbeat_interval: int = 30
    janitor_grace: float = 30.0

    # Worker processes: how many requests each runs at once, and how many of them may do heavy work.
    #: Requests one worker process runs at once, each in its own thread (2 x 100 fit a Standard-1X dyno).
    worker_threads: int = 100
    #: Image downloads, video copies and local encodes one worker process runs at once (memory peaks).
    worker_heavy_steps: int = 2

    # Who may call, and how much.
    #: SHA-256 hex digests of the accepted API keys (plain keys are hashed at load time).
    api_key_digests: tuple[str, ...] = field(default=(), repr=False)
    auth_disabled: bool = False
    image_host_allowlist: tuple[str, ...] = ()
    #: (requests, window seconds) per API key, or None for no limit.
    rate_limit: tuple[int, int] | None = None
    max_queued: int = 10000
    max_body_bytes: int = 64 * 1024
    #: Requests in flight at Pika at once (0: no cap beyond the number of workers).
    pika_max_concurrency: int = 0
    rq_dashboard: bool = False
    #: SHA-256 hex digests of the keys that open the dashboard at /rq (never the API keys).
    admin_key_digests: tuple[str, ...] = field(default=(), repr=False)
    #: Whether the dashboard may requeue, delete, empty and compact (same-origin POSTs only).
    rq_dashboard_actions: bool = False
    #: Whether I2V_AUTH_DISABLED=1 or development mode may listen on a non-loopback address.
    allow_public_unsafe: bool = False

    # Records and the web edge.
    record_ttl: int = 7 * 24 * 3600
    log_level: str = "INFO"
    #: ``json`` (one object per line, for log platforms) or ``text`` (one readable line, for people).
    log_format: str = "json"

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


def _parse_url(name: str, raw: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not parts.netloc:
        # Masked: REDIS_URL carries a password, and start-up errors end up in logs.
        raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {mask_url(raw)!r}")
    return raw.rstrip("/") if parts.scheme in ("http", "https") else raw


# name -> (field, parser). Numbers are (integer?, minimum, maximum).
_NUMBERS: dict[str, tuple[str, bool, float, float | None]] = {
    "INITIAL_WAIT_TIME": ("initial_wait_time", False, 0, None),
    "MAX_CHECK_TIME": ("max_check_time", False, 0, None),
    "POLL_INTERVAL": ("poll_interval", False, 0.01, None),
    "CAPTION_TIMEOUT": ("caption_timeout", False, 1, None),
    "CAPTION_POLL_INTERVAL": ("caption_poll_interval", False, 0.01, None),
    "PROVIDER_RETRY_BUDGET": ("provider_retry_budget", False, 0, None),
    "RETRY_BASE_DELAY": ("retry_base_delay", False, 0.01, None),
    "HTTP_CONNECT_TIMEOUT": ("http_connect_timeout", False, 0.1, None),
    "HTTP_READ_TIMEOUT": ("http_read_timeout", False, 0.1, None),
    "DOWNLOAD_DEADLINE": ("download_deadline", False, 1, None),
    "RECORD_TTL": ("record_ttl", True, 60, None),
    "MEDIA_TTL": ("media_ttl", True, 60, None),
    "IMAGE_MAX_BYTES": ("image_max_bytes", True, 1024, None),
    "LOCAL_VIDEO_SECONDS": ("local_video_seconds", False, 0.5, 30),
    "LOCAL_VIDEO_FPS": ("local_video_fps", True, 1, 60),
    "MAX_QUEUED": ("max_queued", True, 1, None),
    "MAX_BODY_BYTES": ("max_body_bytes", True, 256, None),
    "PIKA_MAX_CONCURRENCY": ("pika_max_concurrency", True, 0, None),
    "JANITOR_INTERVAL": ("janitor_interval", False, 0.1, None),
    "JANITOR_GRACE": ("janitor_grace", False, 0, None),
    "WORKER_HEARTBEAT_INTERVAL": ("worker_heartbeat_interval", True, 1, 600),
    "WORKER_THREADS": ("worker_threads", True, 1, 1000),
    "WORKER_HEAVY_STEPS": ("worker_heavy_steps", True, 1, 64),
    "PIKA_FRAME_RATE": ("pika_frame_rate", True, 1, 24),
    "PIKA_MOTION": ("pika_motion", True, 1, 4),
    "PIKA_GUIDANCE_SCALE": ("pika_guidance_scale", False, 5, 25),
}
_STRINGS: dict[str, str] = {
    "PIKAPI_BEARER_TOKEN": "pikapi_bearer_token",
    "REPLICATE_API_TOKEN": "replicate_api_token",
    "GAME_API_KEY": "game_api_key",
    "PIKA_MODEL": "pika_model",
    "PIKA_NEGATIVE_PROMPT": "pika_negative_prompt",
    "I2V_QUEUE": "queue_name",
    "MEDIA_DIR": "media_dir",
    "MEDIA_NAME_SECRET": "media_name_secret",
}
_URLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "REDIS_URL": ("redis_url", ("redis", "rediss", "unix")),
    "PIKAPI_BASE_URL": ("pikapi_base_url", ("http", "https")),
    "REPLICATE_BASE_URL": ("replicate_base_url", ("http", "https")),
    "CALLBACK_API_URL": ("callback_api_url", ("http", "https")),
    "REDOC_JS_URL": ("redoc_js_url", ("http", "https")),
    "PUBLIC_BASE_URL": ("public_base_url", ("http", "https")),
}
_CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "CLIP_MODEL_NAME": ("clip_model_name", CLIP_MODEL_NAMES),
    "CLIP_MODE": ("clip_mode", CLIP_MODES),
    "PIKA_ASPECT_RATIO": ("pika_aspect_ratio", ("", *PIKA_ASPECT_RATIOS)),
    "LOG_LEVEL": ("log_level", ("DEBUG", "INFO", "WARNING", "ERROR")),
    "LOG_FORMAT": ("log_format", LOG_FORMATS),
    "I2V_ENV": ("env", ("production", "development")),
    "CAPTION_BACKEND": ("caption_backend", ("replicate", "local")),
    "VIDEO_BACKEND": ("video_backend", ("pika", "replicate", "local")),
    "MEDIA_STORE": ("media_store", ("disk", "redis")),
}

#: Every variable the service reads, for documentation checks.
VARIABLES = frozenset(
    [
        *_NUMBERS,
        *_STRINGS,
        *_URLS,
        *_CHOICES,
        "REPLICATE_MODEL_ID",
        "CALLBACK_RETRY_DELAYS",
        "CALLBACK_SIGNING_SECRET",
        "CALLBACK_URL_ALLOWLIST",
        "I2V_API_KEYS",
        "I2V_AUTH_DISABLED",
        "IMAGE_HOST_ALLOWLIST",
        "RATE_LIMIT",
        "ALLOW_LOCAL_BACKENDS",
        "RQ_DASHBOARD",
        "RQ_DASHBOARD_ACTIONS",
        "I2V_ADMIN_KEYS",
        "I2V_ALLOW_PUBLIC_UNSAFE",
        "REDIS_SSL_CERT_REQS",
        "REPLICATE_VIDEO_MODEL",
    ]
)


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _parse_api_keys(raw: str, name: str = "I2V_API_KEYS") -> tuple[str, ...]:
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


def _parse_hosts(raw: str) -> tuple[str, ...]:
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


def _parse_secrets(name: str, raw: str) -> tuple[str, ...]:
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


def _with_cert_reqs(url: str, reqs: str) -> str:
    """Add ``ssl_cert_reqs`` to a ``rediss://`` URL (managed Redis with self-signed certificates)."""
    if not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}ssl_cert_reqs={reqs}"


def _parse_model_name(name: str, raw: str) -> str:
    owner_name = raw.partition(":")[0]
    if owner_name.count("/") != 1 or not all(owner_name.split("/")):
        raise ConfigError(f"{name} must look like owner/name or owner/name:version, got {raw!r}")
    return raw


def _parse_model_id(raw: str) -> str:
    owner_name, sep, version = raw.partition(":")
    if not sep or owner_name.count("/") != 1 or not version or not all(owner_name.split("/")):
        raise ConfigError(f"REPLICATE_MODEL_ID must look like owner/name:version, got {raw!r}")
    return raw


def settings_from(env: Mapping[str, str]) -> Settings:
    """Build settings from a mapping of variables; unset or empty variables take the defaults.

    Raises:
        ConfigError: a value is malformed or out of range; the message names the variable.
    """
    values: dict[str, object] = {}

    def given(name: str) -> str | None:
        raw = env.get(name)
        return raw.strip() if raw is not None and raw.strip() != "" else None

    for name, (attr, integer, low, high) in _NUMBERS.items():
        if (raw := given(name)) is not None:
            values[attr] = _parse_number(name, raw, integer=integer, minimum=low, maximum=high)
    for name, attr in _STRINGS.items():
        if (raw := given(name)) is not None:
            values[attr] = raw
    for name, (attr, schemes) in _URLS.items():
        if (raw := given(name)) is not None:
            values[attr] = _parse_url(name, raw, schemes)
    for name, (attr, choices) in _CHOICES.items():
        if (raw := given(name)) is not None:
            cased = raw.upper() if name == "LOG_LEVEL" else raw.lower() if name == "LOG_FORMAT" else raw
            values[attr] = _parse_choice(name, cased, choices)
    if (raw := given("REPLICATE_MODEL_ID")) is not None:
        values["replicate_model_id"] = _parse_model_id(raw)
    if (raw := given("CALLBACK_RETRY_DELAYS")) is not None:
        values["callback_retry_delays"] = _parse_delays("CALLBACK_RETRY_DELAYS", raw)
    if (raw := given("I2V_API_KEYS")) is not None:
        values["api_key_digests"] = _parse_api_keys(raw)
    if (raw := given("RQ_DASHBOARD")) is not None:
        values["rq_dashboard"] = _parse_bool("RQ_DASHBOARD", raw)
    if (raw := given("RQ_DASHBOARD_ACTIONS")) is not None:
        values["rq_dashboard_actions"] = _parse_bool("RQ_DASHBOARD_ACTIONS", raw)
    if (raw := given("I2V_ADMIN_KEYS")) is not None:
        values["admin_key_digests"] = _parse_api_keys(raw, "I2V_ADMIN_KEYS")
    if (raw := given("I2V_ALLOW_PUBLIC_UNSAFE")) is not None:
        values["allow_public_unsafe"] = _parse_bool("I2V_ALLOW_PUBLIC_UNSAFE", raw)
    if (raw := given("ALLOW_LOCAL_BACKENDS")) is not None:
        values["allow_local_backends"] = _parse_bool("ALLOW_LOCAL_BACKENDS", raw)
    if (raw := given("REPLICATE_VIDEO_MODEL")) is not None:
        values["replicate_video_model"] = _parse_model_name("REPLICATE_VIDEO_MODEL", raw)
    if (raw := given("I2V_AUTH_DISABLED")) is not None:
        values["auth_disabled"] = _parse_bool("I2V_AUTH_DISABLED", raw)
    if (raw := given("IMAGE_HOST_ALLOWLIST")) is not None:
        values["image_host_allowlist"] = _parse_hosts(raw)
    if (raw := given("RATE_LIMIT")) is not None:
        values["rate_limit"] = _parse_rate("RATE_LIMIT", raw)
    if (raw := given("CALLBACK_URL_ALLOWLIST")) is not None:
        values["callback_url_allowlist"] = _parse_hosts(raw)
    if (raw := given("CALLBACK_SIGNING_SECRET")) is not None:
        values["callback_signing_secrets"] = _parse_secrets("CALLBACK_SIGNING_SECRET", raw)
    if (raw := given("REDIS_SSL_CERT_REQS")) is not None and "redis_url" in values:
        values["redis_url"] = _with_cert_reqs(
            str(values["redis_url"]), _parse_choice("REDIS_SSL_CERT_REQS", raw, ("required", "optional", "none"))
        )
    if values.get("env") == "development" and "public_base_url" not in values:
        values["public_base_url"] = f"http://127.0.0.1:{env.get('PORT') or '8000'}"
    if "media_name_secret" in values and len(str(values["media_name_secret"])) < MIN_MEDIA_SECRET_LENGTH:
        raise ConfigError(
            f"MEDIA_NAME_SECRET must be at least {MIN_MEDIA_SECRET_LENGTH} characters (openssl rand -hex 32)"
        )
    settings = Settings(**values)
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
    return settings


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Read settings from ``env`` (default: the process environment, after loading ``.env``).

    Values already in the environment win over `.env`; ``I2V_DOTENV=0`` skips the file (tests).
    """
    if env is None:
        if dotenv and os.environ.get("I2V_DOTENV", "1") != "0":
            load_dotenv(find_dotenv(usecwd=True), override=False)
        env = os.environ
    return settings_from(env)


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``, also where JSON escaped one of its characters."""
    for secret in secrets:
        text = text.replace(secret, "***")
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, "***")
    return text


def known_secrets(settings: Settings) -> tuple[str, ...]:
    """Every secret value of ``settings`` long enough to mask without garbling ordinary text."""
    values = (
        settings.pikapi_bearer_token,
        settings.replicate_api_token,
        settings.game_api_key,
        settings.media_name_secret,
        *settings.callback_signing_secrets,
        *url_secrets(settings.redis_url),
    )
    return tuple(s for s in values if len(s) >= 4)


class SecretFilter(logging.Filter):
    """Masks known secrets in records of loggers whose output this service does not format itself.

    RQ's and gunicorn's loggers print with their own handlers; attached to those handlers (or to
    RQ's logger), this puts their lines through the same masking as our own log formatters.
    """

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and traceback) with the secrets masked; never drop it."""
        if self.secrets:
            record.msg = mask(record.getMessage(), self.secrets)
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = mask(record.exc_text, self.secrets)
        return True


class _LogFormatter(logging.Formatter):
    """What both log formats share: the record's structured extras and the secret masking.

    Known secret values are masked wherever they appear, as a last line of defence: no code path
    is meant to log them in the first place.
    """

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def extras(self, record: logging.LogRecord) -> dict[str, object]:
        """The fields a call added with ``extra=``, in the order it gave them."""
        return {k: v for k, v in record.__dict__.items() if k not in self._STANDARD and not k.startswith("_")}


class JsonLogFormatter(_LogFormatter):
    """One JSON object per line: time, level, logger, message and any structured extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(self.extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask(json.dumps(entry, default=str), self.secrets)


def _text_value(value: object) -> str:
    """A ``key=value`` value: bare when it is one plain word, else quoted as a JSON string."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c.isspace() or c in '"=\\' for c in text) and text.isprintable():
        return text
    return json.dumps(text)


class TextLogFormatter(_LogFormatter):
    """One readable line per event: time, level, logger, message, then the extras as ``key=value``.

    ``request_id`` and ``stage`` come first, so that a person can follow one request by eye; a
    traceback follows on indented lines. Masks secrets exactly as :class:`JsonLogFormatter` does.
    """

    _FIRST = ("request_id", "stage")

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        parts = [f"{ts}.{int(record.msecs):03d}Z", f"{record.levelname:<7}", record.name, record.getMessage()]
        extras = self.extras(record)
        ordered = [k for k in self._FIRST if k in extras] + [k for k in extras if k not in self._FIRST]
        parts += [f"{key}={_text_value(extras[key])}" for key in ordered]
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        # Continuation lines (a multi-line message, a traceback) are indented: one event, one block.
        return mask(line.rstrip("\n").replace("\n", "\n    "), self.secrets)


def log_formatter(settings: Settings) -> logging.Formatter:
    """The formatter ``LOG_FORMAT`` asks for, masking the known secrets of ``settings``."""
    kind = TextLogFormatter if settings.log_format == "text" else JsonLogFormatter
    return kind(known_secrets(settings))


def configure_logging(settings: Settings) -> None:
    """Send log lines to stderr in ``LOG_FORMAT`` at ``LOG_LEVEL`` (idempotent: one handler per process)."""
    root = logging.getLogger()
    formatter = log_formatter(settings)
    for handler in root.handlers:
        if isinstance(handler.formatter, _LogFormatter):
            handler.setFormatter(formatter)
            break
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # httpx logs every request URL at INFO; the status codes we care about are logged by us.
    logging.getLogger("httpx").setLevel(logging.WARNING)
