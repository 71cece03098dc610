"""Settings declared once: the generated files follow the declarations, and every process loads them once."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys

import pytest
from dotenv import dotenv_values

import config
from config import WRITE_COMMAND, Settings, all_variables, load_or_exit, settings_from, settings_variables
from tests.helpers import ROOT, python_env


def test_the_reference_and_env_example_are_made_from_the_declarations() -> None:
    stale = [str(path.relative_to(ROOT)) for path in config.stale_files()]
    assert stale == [], f"{stale} not current: run `{WRITE_COMMAND}`"


def test_each_variable_and_attribute_is_declared_once() -> None:
    names = [v.name for v in all_variables()]
    assert len(names) == len(set(names))
    assert [v.attr for v in settings_variables()] == [f.name for f in dataclasses.fields(Settings)]


def test_the_defaults_written_in_env_example_are_the_defaults() -> None:
    """Uncommenting every line of .env.example changes nothing: each shows its setting's real default."""
    text = (ROOT / ".env.example").read_text()
    uncommented = re.sub(r"^# ([A-Z0-9_]+=)", r"\1", text, flags=re.MULTILINE)
    given = {k: v for k, v in dotenv_values(stream=io.StringIO(uncommented)).items() if v is not None}
    assert {v.name for v in all_variables()} <= given.keys()
    assert settings_from(given) == settings_from({})


def test_settings_from_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CHECK_TIME", "soon")
    assert settings_from({}).max_check_time == 420
    assert settings_from({"MAX_CHECK_TIME": "600"}).max_check_time == 600


def test_blank_values_take_the_default_and_values_are_stripped() -> None:
    blank = settings_from({"MAX_CHECK_TIME": "  ", "LOG_LEVEL": "", "I2V_API_KEYS": " "})
    assert (blank.max_check_time, blank.log_level, blank.api_key_digests) == (420, "INFO", ())
    assert settings_from({"MAX_CHECK_TIME": " 30 "}).max_check_time == 30


def test_every_secret_stays_out_of_repr_and_is_masked() -> None:
    secret = "whsec_" + "c2VjcmV0LXZhbHVlLTAxMjM0NQ=="
    env = {
        "REPLICATE_API_TOKEN": "r8-token-value",
        "PIKAPI_BEARER_TOKEN": "pika-token-value",
        "GAME_API_KEY": "game-key-value",
        "MEDIA_NAME_SECRET": "m" * 32,
        "CALLBACK_SIGNING_SECRET": secret,
        "I2V_API_KEYS": "api-key-of-16-chars",
        "I2V_ADMIN_KEYS": "admin-key-16-chars",
    }
    settings = settings_from(env)
    text = repr(settings)
    secrets = config.known_secrets(settings)
    for variable in (v for v in settings_variables() if v.secret):
        value = getattr(settings, str(variable.attr))
        assert value, f"{variable.name} was not set by the test"
        for part in value if isinstance(value, tuple) else (value,):
            assert part not in text, variable.name
            assert part in secrets, variable.name


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This test process as if it had loaded no settings yet, with no `.env`."""
    monkeypatch.setattr(config, "_process_settings", None)
    monkeypatch.setenv("I2V_DOTENV", "0")
    return monkeypatch


def test_load_or_exit_names_the_process_the_variable_and_the_value(fresh_process: pytest.MonkeyPatch) -> None:
    fresh_process.setenv("MAX_CHECK_TIME", "soon")
    with pytest.raises(SystemExit) as caught:
        load_or_exit("web")
    assert str(caught.value) == "i2v web: MAX_CHECK_TIME must be a number, got 'soon'"


def test_load_or_exit_loads_once_per_process(fresh_process: pytest.MonkeyPatch) -> None:
    fresh_process.setenv("MAX_CHECK_TIME", "600")
    first = load_or_exit("worker")
    fresh_process.setenv("MAX_CHECK_TIME", "soon")
    assert load_or_exit("worker") is first
    assert first.max_check_time == 600


def test_a_worker_needs_its_provider_tokens(fresh_process: pytest.MonkeyPatch) -> None:
    for name in (
        "REPLICATE_API_TOKEN",
        "PIKAPI_BEARER_TOKEN",
        "GAME_API_KEY",
        "I2V_ENV",
        "CAPTION_BACKEND",
        "VIDEO_BACKEND",
    ):
        fresh_process.delenv(name, raising=False)
    assert load_or_exit("janitor").video_backend == "pika"  # only a worker needs the tokens
    with pytest.raises(SystemExit) as caught:
        load_or_exit("worker", provider_tokens=True)
    assert str(caught.value) == (
        "i2v worker: refusing to start, missing REPLICATE_API_TOKEN, PIKAPI_BEARER_TOKEN, GAME_API_KEY"
    )


LOADS_IN_A_WORKER = """
import config

loads = []
load_settings = config.load_settings
config.load_settings = lambda *args, **kwargs: loads.append(1) or load_settings(*args, **kwargs)

import jobs.rq_settings  # what `rq worker-pool --config jobs.rq_settings` imports first
from jobs.context import get_context
from jobs.worker import PipelineWorker

PipelineWorker(["i2v"])  # what each worker of the pool makes
get_context()  # what each job asks for
print(len(loads))
"""


def test_a_worker_process_loads_its_settings_once(redis_url: str) -> None:
    env = python_env(
        {
            "I2V_DOTENV": "0",
            "I2V_ENV": "development",
            "CAPTION_BACKEND": "local",
            "VIDEO_BACKEND": "local",
            "REDIS_URL": redis_url,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", LOADS_IN_A_WORKER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
