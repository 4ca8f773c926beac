"""JSON-lines logging every program uses.

Each program calls `setup_logging("day_trader")` once: a run file
`logs/day_trader_run_YYYYMMDD_HHMMSS.json` (rotated by size) gets one JSON object per line with
stable keys `ts`, `level`, `bot`, `event` plus the event's fields; the console gets a short
human-readable line. Code logs events, not prose:

    log = get_logger("exit_manager")
    log.info("stop_triggered", symbol="AAPL", last=187.1, stop=187.3)
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import Secret

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_MAX_BYTES = 20 * 1024 * 1024
_BACKUPS = 5
_bot_name = "app"
_secret_values: set[str] = set()
# Credentials a remote server may echo back into an error text (headers, query strings).
_CREDENTIAL_PATTERN = re.compile(
    r"(?i)(\bbearer\s+)[^\s\"',;&]+"
    r"|(\b(?:api[_-]?key|apikey|access[_-]?token|token|authorization|password)\b[\"']?\s*[=:]\s*[\"']?)"
    r"(?!bearer\b)[^\s\"',;&]+"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def remember_secrets(*values: str) -> None:
    """Values that must never appear in a log line (the configured API keys, ...)."""
    _secret_values.update(v for v in values if v and len(v) >= 4)


def scrub(text: str) -> str:
    """`text` with every remembered secret and every `Bearer x` / `apiKey=x` value as ***."""
    for value in _secret_values:
        if value in text:
            text = text.replace(value, "***")
    return _CREDENTIAL_PATTERN.sub(lambda m: f"{m.group(1) or m.group(2)}***", text)


def printable(text: str) -> str:
    """One console line: control characters shown escaped, so no value can forge a line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _plain(value: Any) -> Any:
    """JSON-safe form of a field value; secrets stay hidden, NaN becomes null."""
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RESERVED and k not in {"event", _EXCHANGE_TIME}
    }


_EXCHANGE_TIME = "_exchange_time"  # cached on the record: file and console show the same time


def exchange_time(record: logging.LogRecord) -> datetime:
    """When `record` happened in New York exchange time, on the process clock: simulated
    time in a simulation, so a line belongs to the trading day it is about."""
    cached = record.__dict__.get(_EXCHANGE_TIME)
    if cached is not None:
        return cached
    from core.clock import NEW_YORK, get_clock

    try:
        moment = get_clock().now()
    except Exception:  # logging never fails: an unreadable clock file falls back to wall time
        moment = datetime.fromtimestamp(record.created, NEW_YORK)
    setattr(record, _EXCHANGE_TIME, moment)
    return moment


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO, wall time), exchange_time (New York, the
    process clock: simulated in a simulation), level, bot, event, logger, fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "exchange_time": exchange_time(record).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "bot": _bot_name,
            "event": getattr(record, "event", None) or record.getMessage(),
            "logger": record.name,
        }
        if getattr(record, "event", None) is None and record.args:
            payload["message"] = record.getMessage()
        payload.update({k: _plain(v) for k, v in _fields(record).items()})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(payload, default=str))


class ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL bot event key=value ...` for people watching a terminal; the time is
    New York exchange time (simulated in a simulation), never the machine's zone."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = exchange_time(record).strftime("%H:%M:%S")
        event = getattr(record, "event", None) or record.getMessage()
        extras = " ".join(f"{k}={_plain(v)}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {_bot_name} {event}"
        if extras:
            line = f"{line} {extras}"
        line = printable(line)
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return scrub(line)


class EventLogger:
    """A thin wrapper: `log.info("event", key=value)` becomes a structured record."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            safe = {k if k not in _RESERVED else f"{k}_": v for k, v in fields.items()}
            safe["event"] = event
            self._logger.log(level, event, extra=safe, exc_info=exc_info, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, False, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log(logging.CRITICAL, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, True, fields)


def _remember_configured_secrets() -> None:
    from core.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError:
        return  # the program reports the bad setting itself
    remember_secrets(*(v.reveal() for v in vars(settings).values() if isinstance(v, Secret) and v))


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name))


def setup_logging(
    bot: str,
    log_dir: str | Path | None = None,
    level: str = "INFO",
    console: bool = True,
) -> Path | None:
    """Configure the root logger for program `bot`; returns the run file's path.

    With `log_dir` None the settings' LOG_DIR is used; if the folder cannot be written the
    program still logs to the console and says so (logging must never stop trading).
    """
    global _bot_name
    _bot_name = bot
    _remember_configured_secrets()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)

    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(ConsoleFormatter())
        root.addHandler(stream)

    if log_dir is None:
        from core.settings import get_settings

        log_dir = get_settings().log_dir
    run_file: Path | None = Path(log_dir) / f"{bot}_run_{time.strftime('%Y%m%d_%H%M%S')}.json"
    try:
        run_file.parent.mkdir(parents=True, exist_ok=True)
        if run_file.exists():  # two starts in one second: keep both
            run_file = run_file.with_name(f"{run_file.stem}_{os.getpid()}.json")
        file_handler = logging.handlers.RotatingFileHandler(
            run_file, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"
        )
    except OSError as exc:
        run_file = None
        get_logger("logs").warning("log_file_unavailable", log_dir=str(log_dir), error=str(exc))
    else:
        file_handler.setFormatter(JsonFormatter())
        root.addHandler(file_handler)
    return run_file
