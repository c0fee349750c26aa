"""Structured logging with bound context (``child(**fields)``) on top of Dagster's log.

A line goes to the Dagster run log (fields appended as ``key=value``) and to stderr as one JSON
object, with the run's context and secrets redacted in both; inside a task ``get_logger()`` returns
the run's logger. Details: docs/platform.md, "alianza_jobs.logs".
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

from alianza_jobs.redaction import redact, secret_values
from alianza_jobs.settings import log_level_name

STDERR_LOGGER_NAME = "alianza_jobs"
# Dagster records these per event already; repeating them in the message text is noise in the UI.
_DAGSTER_NATIVE_FIELDS = frozenset({"run_id", "job"})
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def level_from_env() -> int:
    return _LEVELS.get(log_level_name(), logging.INFO)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        return json.dumps(payload, default=_json_default, ensure_ascii=False)


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (Dagster's compute-log capture and pytest swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _stderr_logger() -> logging.Logger:
    logger = logging.getLogger(STDERR_LOGGER_NAME)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_JsonFormatter())
        logger.addHandler(handler)
        # Our handler prints JSON; letting records also reach Dagster's console handler would print
        # each line twice in different formats.
        logger.propagate = False
    logger.setLevel(level_from_env())
    return logger


def logfmt(fields: Mapping[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = _json_default(value) if not isinstance(value, str) else value
        if isinstance(value, bool):
            text = "true" if value else "false"
        if text == "" or any(c in text for c in ' ="\n\t'):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse_logfmt_suffix(message: str) -> tuple[str, dict[str, str]]:
    """Split a Dagster message written by :class:`TaskLogger` back into text and fields."""
    text, sep, tail = message.partition("  ")
    if not sep:
        return message, {}
    fields: dict[str, str] = {}
    i, n = 0, len(tail)
    while i < n:
        eq = tail.find("=", i)
        if eq < 0:
            return message, {}
        key = tail[i:eq]
        if not key or " " in key:
            return message, {}
        j = eq + 1
        if j < n and tail[j] == '"':
            try:
                value, end = json.JSONDecoder().raw_decode(tail, j)
            except json.JSONDecodeError:
                return message, {}
            fields[key], j = str(value), end
        else:
            end = tail.find(" ", j)
            end = n if end < 0 else end
            fields[key], j = tail[j:end], end
        i = j + 1 if j < n and tail[j] == " " else j
    return text, fields


class TaskLogger:
    """A logger with bound fields; ``child(**fields)`` returns one with more."""

    def __init__(
        self,
        fields: Mapping[str, Any] | None = None,
        dagster_log: logging.Logger | None = None,
        level: int | None = None,
    ) -> None:
        self._fields: dict[str, Any] = dict(fields or {})
        self._dagster_log = dagster_log
        self._level = level_from_env() if level is None else level
        self._stderr = _stderr_logger()

    @property
    def fields(self) -> Mapping[str, Any]:
        return dict(self._fields)

    def child(self, **fields: Any) -> TaskLogger:
        return TaskLogger({**self._fields, **fields}, self._dagster_log, self._level)

    def bind(self, **fields: Any) -> None:
        """Add fields to this logger itself (every later line carries them)."""
        self._fields.update(fields)

    def debug(self, msg: str, **fields: Any) -> None:
        self.log(logging.DEBUG, msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log(logging.INFO, msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log(logging.WARNING, msg, **fields)

    def error(self, msg: str, error: BaseException | None = None, **fields: Any) -> None:
        if error is not None:
            fields.setdefault("error", f"{type(error).__name__}: {error}")
        self.log(logging.ERROR, msg, **fields)

    def log(self, level: int, msg: str, **fields: Any) -> None:
        if level < self._level:
            return
        secrets = secret_values()
        merged = {
            k: redact(v, secrets) if isinstance(v, str) else v
            for k, v in {**self._fields, **fields}.items()
        }
        msg = redact(msg, secrets)
        if self._dagster_log is not None:
            shown = {k: v for k, v in merged.items() if k not in _DAGSTER_NATIVE_FIELDS}
            suffix = logfmt(shown)
            self._dagster_log.log(level, f"{msg}  {suffix}" if suffix else msg)
        self._stderr.log(level, msg, extra={"fields": merged})


_current: contextvars.ContextVar[TaskLogger | None] = contextvars.ContextVar(
    "alianza_task_logger", default=None
)


def get_logger(**fields: Any) -> TaskLogger:
    """The current task's logger (or a plain stderr one outside a task), with ``fields`` bound."""
    logger = _current.get() or TaskLogger()
    return logger.child(**fields) if fields else logger


@contextmanager
def bound_logger(logger: TaskLogger) -> Iterator[TaskLogger]:
    token = _current.set(logger)
    try:
        yield logger
    finally:
        _current.reset(token)
