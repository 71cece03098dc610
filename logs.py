"""Log set-up of every process: JSON or text lines on stderr, with known secrets masked in each.

``configure_logging`` gives the root logger one handler in ``LOG_FORMAT``; ``SecretFilter`` puts
the lines of loggers that format their own output (RQ, gunicorn) through the same masking.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from config import Settings, known_secrets, mask


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
