"""Settings: defaults, parsing, and a process that refuses bad values by name."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys

import pytest

from config import (
    DEFAULT_REPLICATE_MODEL_ID,
    ConfigError,
    Settings,
    known_secrets,
    mask_url,
    settings_from,
)
from logs import JsonLogFormatter
from tests.helpers import ROOT, python_env


def test_defaults_keep_the_original_meanings() -> None:
    s = settings_from({})
    assert s.pikapi_base_url == "https://api.pikapikapika.io/web"
    assert s.callback_api_url == "https://game-api.virtuals.io/requests"
    assert s.replicate_model_id == DEFAULT_REPLICATE_MODEL_ID
    assert s.max_check_time == 420
    assert s.poll_interval == 10
    assert (s.clip_model_name, s.clip_mode) == ("ViT-L-14/openai", "best")
    assert (s.pika_model, s.pika_frame_rate, s.pika_motion, s.pika_guidance_scale) == ("1.5", 24, 2, 16)


def test_job_timeout_covers_the_whole_wait_and_never_falls_to_rq_default() -> None:
    s = settings_from({"INITIAL_WAIT_TIME": "300", "MAX_CHECK_TIME": "420"})
    assert s.job_timeout > 180
    assert s.job_timeout > s.initial_wait_time + s.max_check_time + s.caption_timeout


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CHECK_TIME", "soon"),
        ("INITIAL_WAIT_TIME", "-1"),
        ("POLL_INTERVAL", "0"),
        ("POLL_INTERVAL", "nan"),
        ("PIKA_FRAME_RATE", "25"),
        ("PIKA_FRAME_RATE", "24.5"),
        ("PIKA_MOTION", "0"),
        ("PIKA_GUIDANCE_SCALE", "30"),
        ("PIKA_ASPECT_RATIO", "2:1"),
        ("CLIP_MODE", "slow"),
        ("CLIP_MODEL_NAME", "ViT-X"),
        ("REDIS_URL", "http://localhost"),
        ("PIKAPI_BASE_URL", "ftp://x"),
        ("REPLICATE_MODEL_ID", "no-version"),
        ("CALLBACK_RETRY_DELAYS", "5,later"),
        ("RECORD_TTL", "1.5"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings_from({name: value})


@pytest.mark.parametrize(
    ("url", "env", "accepted"),
    [
        ("http://game.example/requests", "production", False),
        ("http://10.0.0.5/requests", "production", False),
        ("http://game.example/requests", "development", True),
        ("http://127.0.0.1:8000/requests", "production", True),
        ("http://localhost:8000/requests", "production", True),
        ("https://game.example/requests", "production", True),
    ],
)
def test_production_callbacks_use_https_except_to_loopback(url: str, env: str, accepted: bool) -> None:
    """Every callback carries GAME_API_KEY, so production refuses plain http off this machine."""
    given = {"CALLBACK_API_URL": url, "I2V_ENV": env}
    if accepted:
        assert settings_from(given).callback_api_url == url
    else:
        with pytest.raises(ConfigError, match="CALLBACK_API_URL must be https"):
            settings_from(given)


def test_signing_secret_is_validated_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from({"CALLBACK_SIGNING_SECRET": "not-a-secret-value"})
    assert "not-a-secret-value" not in str(info.value)
    s = settings_from(
        {"CALLBACK_SIGNING_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3Q="}
    )
    assert len(s.callback_signing_secrets) == 2


def test_secrets_stay_out_of_repr() -> None:
    s = Settings(pikapi_bearer_token="pika-secret", replicate_api_token="r8-secret", game_api_key="game-secret")
    text = repr(s)
    assert "secret" not in text


def test_missing_worker_tokens_are_named() -> None:
    assert Settings(replicate_api_token="x").missing_worker_tokens() == [
        "PIKAPI_BEARER_TOKEN",
        "GAME_API_KEY",
    ]


def test_log_formatter_masks_secret_values() -> None:
    import logging

    formatter = JsonLogFormatter(("sekrit-token",))
    record = logging.LogRecord("x", logging.INFO, "f", 1, "token is %s", ("sekrit-token",), None)
    assert "sekrit-token" not in formatter.format(record)


def test_web_process_stops_at_start_naming_a_bad_variable() -> None:
    env = python_env({"MAX_CHECK_TIME": "forever", "I2V_DOTENV": "0"})
    proc = subprocess.run(
        [sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "MAX_CHECK_TIME" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["I2V_API_KEYS", "I2V_ADMIN_KEYS"])
def test_short_plain_keys_are_refused_without_being_echoed(name: str) -> None:
    """A plain key under 16 characters stops the process; digests and 16-character keys are fine."""
    with pytest.raises(ConfigError, match=name) as caught:
        settings_from({name: "long-enough-key-0001,short-key-15ch"})
    assert "short-key-15ch" not in str(caught.value)
    digest = hashlib.sha256(b"short").hexdigest()
    accepted = settings_from({name: f"sixteen-chars-ok,sha256:{digest},{digest}", "RQ_DASHBOARD": "0"})
    field = "api_key_digests" if name == "I2V_API_KEYS" else "admin_key_digests"
    assert len(getattr(accepted, field)) == 3


def test_redis_password_is_masked_in_urls_logs_and_config_errors() -> None:
    """REDIS_URL carries a password: masked in an error about it and in every JSON log line."""
    assert mask_url("redis://user:pw-secret-1@redis.example:6380/0") == "redis://user:***@redis.example:6380/0"
    assert mask_url("rediss://:pw-secret-1@redis.example/0?x=1") == "rediss://:***@redis.example/0?x=1"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="REDIS_URL") as caught:
        settings_from({"REDIS_URL": "http://:pw-secret-1@redis.example/0"})
    assert "pw-secret-1" not in str(caught.value)
    settings = settings_from({"REDIS_URL": "redis://default:pw-secret-1@redis.example:6380/0"})
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "cannot reach %s", (settings.redis_url,), None)
    line = JsonLogFormatter(known_secrets(settings)).format(record)
    assert "pw-secret-1" not in line and "***" in line


def test_media_name_secret_is_checked_and_optional() -> None:
    """Too short a secret stops the process; none at all is fine (the deployment makes its own key)."""
    with pytest.raises(ConfigError, match="MEDIA_NAME_SECRET"):
        settings_from({"MEDIA_NAME_SECRET": "short"})
    assert settings_from({}).media_name_secret == ""


@pytest.mark.parametrize(
    ("hosts", "env", "refused"),
    [
        (["127.0.0.1", "::1", "localhost"], {"I2V_AUTH_DISABLED": "1", "I2V_ENV": "development"}, False),
        (["0.0.0.0"], {"I2V_AUTH_DISABLED": "1"}, True),
        (["::"], {"I2V_ENV": "development"}, True),
        ([""], {"I2V_ENV": "development"}, True),
        (["10.1.2.3", "127.0.0.1"], {"I2V_AUTH_DISABLED": "1"}, True),
        (["0.0.0.0"], {}, False),
        (["0.0.0.0"], {"I2V_AUTH_DISABLED": "1", "I2V_ALLOW_PUBLIC_UNSAFE": "1"}, False),
    ],
)
def test_unsafe_modes_are_refused_on_non_loopback_listeners(hosts: list[str], env: dict, refused: bool) -> None:
    problem = settings_from(env).public_listener_problem(hosts)
    assert (problem is not None) == refused
    if refused:
        assert "I2V_ALLOW_PUBLIC_UNSAFE" in problem
        assert all(mode in problem for mode in settings_from(env).unsafe_modes())
