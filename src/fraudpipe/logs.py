"""Structured logs: one line per event; JSON in a cluster, readable on a terminal.

log = get_logger("preprocess")
log.info("batch.done", id=msg_id, rows=n, seconds=0.12)

This is the standard library's logging with one formatter, not structlog or
python-json-logger: key-value events and a JSON line are all the stages need, and the one
thing they add that those would not do for us is the bound on every value (a batch of user
data can quote megabytes into an error); a dependency for the rest would be one more pin to
lock and audit.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_CONFIGURED = False
# The most of one value a log line holds: a batch of user data can carry a field of megabytes,
# and an error message may quote it. Longer values are cut, saying how long they were.
MAX_VALUE_CHARS = 2000
MAX_TRACEBACK_CHARS = 20000


def bounded(value: object, limit: int = MAX_VALUE_CHARS) -> object:
    """value, or its text cut to `limit` characters when longer (numbers and flags pass)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return value
    return f"{text[:limit]}... (cut: {len(text):,} characters)"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        if record.exc_info:
            payload["exc"] = bounded(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS)
        return json.dumps(payload, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        line = f"{stamp} {record.levelname:<7} {record.name:<10} {record.getMessage()} {fields}"
        if record.exc_info:
            line += "\n" + str(bounded(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS))
        return line.rstrip()


def setup(fmt: str = "auto", level: str = "INFO") -> None:
    """Configure the root 'fraudpipe' logger once per process (to stderr)."""
    global _CONFIGURED
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if use_json else _TextFormatter())
    root = logging.getLogger("fraudpipe")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    _CONFIGURED = True


class EventLogger:
    """A thin wrapper so call sites read `log.info("event", key=value)`."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(f"fraudpipe.{name}")

    def _emit(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            kept = {k: bounded(v) for k, v in fields.items()}
            self._log.log(level, bounded(event), extra={"fields": kept}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, False, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._emit(logging.ERROR, event, exc_info, fields)


def get_logger(name: str) -> EventLogger:
    if not _CONFIGURED:
        setup()
    return EventLogger(name)
