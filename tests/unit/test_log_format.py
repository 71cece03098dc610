"""LOG_FORMAT: the readable text lines, the setting's validation, and `make run`'s choice of format."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from config import ConfigError, known_secrets, settings_from
from launch import choose_log_format
from logs import JsonLogFormatter, TextLogFormatter, configure_logging
from tests.helpers import ROOT, python_env

SECRETS_ENV = {
    "REDIS_URL": "redis://default:pw-secret-1@redis.example:6380/0",
    "REPLICATE_API_TOKEN": "r8_secret_token_0123",
    "GAME_API_KEY": 'game"key\\0123456789',
}


def record(message: str = "polling ended", *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    """A log record as ``logger.info(message, *args, extra=extra)`` makes it."""
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("jobs.pipeline", logging.INFO, "pipeline.py", 1, message, args or None, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_a_text_line_has_time_level_logger_message_then_request_id_stage_and_extras() -> None:
    line = TextLogFormatter().format(
        record(outcome="ok", stage="polling", request_id="demo-1", duration_ms=36480.2, note="two words", n=None)
    )
    assert "\n" not in line
    pattern = (
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z INFO +jobs\.pipeline polling ended "
        r'request_id=demo-1 stage=polling outcome=ok duration_ms=36480\.2 note="two words" n=null'
    )
    assert re.fullmatch(pattern, line), line


def test_text_values_that_would_break_the_line_are_quoted() -> None:
    line = TextLogFormatter().format(record(request_id="a=b", stage="", url='say "hi"', lines="one\ntwo"))
    assert "\n" not in line
    assert line.endswith(r'request_id="a=b" stage="" url="say \"hi\"" lines="one\ntwo"')


def test_a_traceback_follows_on_indented_lines() -> None:
    lines = TextLogFormatter().format(record("step failed", exc=True, request_id="r1")).split("\n")
    assert lines[0].endswith("step failed request_id=r1")
    assert len(lines) > 2 and all(line.startswith("    ") for line in lines[1:])
    assert lines[-1] == "    ValueError: boom"


@pytest.mark.parametrize("formatter", [TextLogFormatter, JsonLogFormatter])
def test_both_formats_mask_the_same_secrets(formatter: type[logging.Formatter]) -> None:
    """Tokens and REDIS_URL's password: in the message, in extras (even quoted), in a traceback."""
    settings = settings_from(SECRETS_ENV)
    secrets = known_secrets(settings)
    rec = record("cannot reach %s", settings.redis_url, token="r8_secret_token_0123", header=settings.game_api_key)
    try:
        raise RuntimeError(f"provider said no to {settings.replicate_api_token}")
    except RuntimeError:
        rec.exc_info = sys.exc_info()
    line = formatter(secrets).format(rec)
    for secret in ("pw-secret-1", "r8_secret_token_0123", "0123456789"):
        assert secret not in line
    assert line.count("***") >= 4


def test_log_format_is_validated_by_name() -> None:
    assert settings_from({}).log_format == "json"
    assert settings_from({"LOG_FORMAT": " Text "}).log_format == "text"
    with pytest.raises(ConfigError, match="LOG_FORMAT") as caught:
        settings_from({"LOG_FORMAT": "yaml"})
    assert "'yaml'" in str(caught.value)


def test_a_bad_log_format_stops_the_process_naming_variable_and_value() -> None:
    env = python_env({"LOG_FORMAT": "logfmt", "I2V_DOTENV": "0"})
    proc = subprocess.run(
        [sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "LOG_FORMAT" in proc.stderr and "logfmt" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for handler in handlers:
        root.removeHandler(handler)
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_configure_logging_switches_format_with_one_handler(root_logger: logging.Logger) -> None:
    def ours() -> list[logging.Handler]:
        # pytest's own capture handlers sit on the root logger too.
        return [h for h in root_logger.handlers if isinstance(h.formatter, TextLogFormatter | JsonLogFormatter)]

    configure_logging(settings_from({}))
    configure_logging(settings_from({"LOG_FORMAT": "text"}))
    [handler] = ours()
    assert isinstance(handler.formatter, TextLogFormatter)
    configure_logging(settings_from({}))
    [handler] = ours()
    assert json.loads(handler.format(record(request_id="r1")))["request_id"] == "r1"


@pytest.mark.parametrize(
    ("given", "terminal", "children_get"),
    [
        (None, True, "text"),
        ("", True, "text"),
        (None, False, None),
        ("json", True, "json"),
        ("text", False, "text"),
    ],
)
def test_make_run_chooses_text_only_for_a_terminal_without_log_format(
    given: str | None, terminal: bool, children_get: str | None
) -> None:
    env = {} if given is None else {"LOG_FORMAT": given}
    chosen = choose_log_format(env, terminal)
    assert env.get("LOG_FORMAT") == (children_get if children_get is not None else given)
    assert chosen == ("text" if given in (None, "") and terminal else None)
