"""Fakes for the client tests: a clock whose sleep advances time, and a log capture."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from alianza_jobs.clients.http import Timing
from alianza_jobs.logs import STDERR_LOGGER_NAME

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
# Sentinel secrets: tests assert they never show up in an exception or a log line.
STREAM_TOKEN = "cf-SENTINEL-stream-token-7d1f0c"
RESEND_KEY = "re_SENTINEL_resend_key_93ab44"


class FakeClock:
    """Monotonic and wall time that only move when someone sleeps (or the test advances them)."""

    def __init__(self, start: datetime = START, rand: float = 0.5) -> None:
        self.t = 0.0
        self.start = start
        self.rand = rand
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def timing(self) -> Timing:
        return Timing(monotonic=self.monotonic, now=self.now, sleep=self.sleep, random=self._rand)

    def _rand(self) -> float:
        return self.rand


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", {})
        self.lines.append(
            f"{record.levelname} {record.getMessage()} {json.dumps(fields, default=str)}"
        )

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Every line our TaskLogger writes (message and fields), as the JSON stderr stream gets it."""
    handler = LogCapture()
    logger = logging.getLogger(STDERR_LOGGER_NAME)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
