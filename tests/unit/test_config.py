"""Settings: defaults, parsing, and a process that refuses bad values by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import DEFAULT_REPLICATE_MODEL_ID, ConfigError, JsonLogFormatter, Settings, settings_from
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
        "MEDIA_NAME_SECRET",
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
