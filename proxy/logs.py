"""Logging: readable text or one JSON object per line, structured fields, and the access log.

Modules attach structured fields with `log_event(logger, "info", "session open", kernel=...)`;
both formats render them (text as `key=value`, JSON as object members).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_FIELDS = "fields"  # the record attribute log_event stores its fields under
_SUMMARISED = "summarised"  # fields already spelled out in the text message


def log_event(logger: logging.Logger, level: str | int, msg: str, **fields: Any) -> None:
    """Log `msg` with structured `fields` (rendered `key=value` in text, members in JSON)."""
    levelno = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if logger.isEnabledFor(levelno):
        logger.log(levelno, msg, extra={_FIELDS: fields})


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and key not in (_FIELDS, _SUMMARISED):
            fields[key] = value
    fields.update(getattr(record, _FIELDS, None) or {})
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return orjson.dumps(text).decode()
    return text


class TextFormatter(logging.Formatter):
    """`2026-11-26T09:00:00 INFO proxy.legacy: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).isoformat(timespec="seconds")
        line = f"{ts} {record.levelname} {record.name}: {record.getMessage()}"
        hidden = getattr(record, _SUMMARISED, ())
        pairs = [f"{k}={_text_value(v)}" for k, v in _fields_of(record).items() if k not in hidden]
        if pairs:
            line += " " + " ".join(pairs)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields_of(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str, fmt: str) -> None:
    """Send all logs to stderr at `level` (debug|info|warning|error) as `fmt` (text|json)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter is only useful when debugging the proxy itself.
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("asyncio", "aiohttp.access", "aiohttp.websocket"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger().level))


class AccessLogger(AbstractAccessLogger):
    """One line per HTTP request: method, path, status, bytes, duration, remote.

    The query string is left out: it carries `?token=` credentials.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        method, path, status = request.method, request.path, response.status
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "bytes": response.body_length,
            "duration_ms": round(time * 1000, 3),
            "remote": request.remote,
        }
        level = logging.INFO if status < 500 else logging.WARNING
        self.logger.log(
            level,
            "%s %s %s",
            method,
            path,
            status,
            extra={_FIELDS: fields, _SUMMARISED: ("method", "path", "status")},
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
