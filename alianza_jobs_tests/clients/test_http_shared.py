"""Shared pieces: Retry-After parsing, backoff, the sliding-window limiter, error values."""

from __future__ import annotations

import asyncio
import copy
import pickle
from datetime import timedelta

import httpx
import pytest

from alianza_jobs.clients.http import (
    ApiError,
    CircuitOpenError,
    HeaderRateLimiter,
    PermanentApiError,
    RetryableApiError,
    RetrySettings,
    SlidingWindowLimiter,
    parse_retry_after,
)
from alianza_jobs_tests.clients.conftest import START, FakeClock


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
        ("Sun, 01 Mar 2026 11:59:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, START) == expected


def test_backoff_is_exponential_capped_and_jittered() -> None:
    settings = RetrySettings(backoff_base_s=1.0, backoff_max_s=4.0)
    assert [settings.backoff(n, 1.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert [settings.backoff(n, 0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError, match="max_attempts"):
        RetrySettings(max_attempts=0)


async def test_sliding_window_limiter(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter(3, 10.0, clock.timing())
    times = []
    for _ in range(7):
        await limiter.acquire()
        times.append(clock.monotonic())
        clock.advance(1.0)
    # 3 at once (1 s apart), then each waits for the oldest to leave the window.
    assert times == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0]
    # The limiter slept 14 s in all: 21 s on the clock, 7 of them the loop's own steps.
    assert clock.monotonic() - 7 * 1.0 == pytest.approx(7.0 + 7.0)


async def test_sliding_window_limiter_under_concurrency(clock: FakeClock) -> None:
    limiter = SlidingWindowLimiter(5, 30.0, clock.timing())
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(clock.monotonic())

    await asyncio.gather(*(one() for _ in range(23)))
    times.sort()
    assert all(times[i + 5] - times[i] >= 30.0 for i in range(len(times) - 5))
    assert times[-1] == 120.0


async def test_pause_for_blocks_the_limiters(clock: FakeClock) -> None:
    for limiter in (
        SlidingWindowLimiter(100, 1.0, clock.timing()),
        HeaderRateLimiter(clock.timing()),
    ):
        start = clock.monotonic()
        limiter.pause_for(42.0)
        await limiter.acquire()
        assert clock.monotonic() - start == pytest.approx(42.0)


async def test_header_limiter_ignores_junk_headers(clock: FakeClock) -> None:
    limiter = HeaderRateLimiter(clock.timing())
    junk = httpx.Response(200, headers={"ratelimit-remaining": "lots", "ratelimit-reset": "-1"})
    limiter.observe(junk)
    await limiter.acquire()
    await limiter.acquire()
    assert clock.sleeps == []


async def test_header_limiter_waits_for_the_window_when_nothing_is_left(clock: FakeClock) -> None:
    limiter = HeaderRateLimiter(clock.timing())
    limiter.observe(
        httpx.Response(
            200,
            headers={"ratelimit-limit": "2", "ratelimit-remaining": "0", "ratelimit-reset": "3"},
        )
    )
    await limiter.acquire()
    assert clock.sleeps == [3.0]
    assert limiter.limit == 2


def test_errors_survive_copy_and_pickle() -> None:
    errors: list[ApiError] = [
        RetryableApiError("resend", 429, "rate_limit_exceeded", "slow down", 2.0),
        PermanentApiError("cloudflare_stream", 404, "not_found", "gone"),
        CircuitOpenError("resend", START + timedelta(minutes=2), "boom"),
    ]
    for error in errors:
        for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):  # noqa: S301
            assert type(clone) is type(error)
            assert str(clone) == str(error)
            assert clone.metadata() == error.metadata()


def test_error_text() -> None:
    error = RetryableApiError("resend", 429, "rate_limit_exceeded", "slow down", 2.0)
    assert str(error) == "resend HTTP 429 rate_limit_exceeded: slow down (retry after 2 s)"
    assert error.retryable
    network = RetryableApiError("resend", None, "network_error", "ConnectError")
    assert str(network) == "resend no response network_error: ConnectError"
    assert str(CircuitOpenError("resend", START, None)) == (
        "circuit open for resend until 12:00:00Z (last error: none)"
    )
