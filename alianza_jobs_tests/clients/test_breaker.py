"""Circuit breaker: opens after N failures, fails later runs fast, one probe decides."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from alianza_jobs.clients.breaker import (
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    MemoryBreakerStore,
)
from alianza_jobs.clients.http import (
    ClientRateLimitedError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.resend import OutgoingEmail
from alianza_jobs.platform.breakers import DatabaseBreakerStore
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.resources import CloudflareStream, ResendEmail
from alianza_jobs_tests.clients.conftest import RESEND_KEY, STREAM_TOKEN, FakeClock, LogCapture
from alianza_jobs_tests.db.helpers import migrated_engine

BASE = "https://cf.test/client/v4"
VIDEO_PATH = "/accounts/acc/stream/vid1"
OK = {
    "success": True,
    "errors": [],
    "messages": [],
    "result": {
        "uid": "vid1",
        "status": {"state": "ready"},
        "duration": 3,
        "created": "2026-01-01T00:00:00Z",
    },
}
MESSAGE = re.compile(
    r"^circuit open for cloudflare_stream until \d\d:\d\d:\d\dZ \(last error: .+\)$"
)


def stream(**overrides: Any) -> CloudflareStream:
    settings: dict[str, Any] = {
        "account_id": "acc",
        "api_token": STREAM_TOKEN,
        "base_url": BASE,
        "max_attempts": 1,
        "breaker_failure_threshold": 3,
        "breaker_cool_down_s": 120.0,
    }
    settings.update(overrides)
    return CloudflareStream(**settings)


def rate_limited(retry_after: str) -> httpx.Response:
    """Cloudflare's 429 (code 971) asking us to stay away ``retry_after`` seconds."""
    return httpx.Response(
        429,
        json={"success": False, "errors": [{"code": 971, "message": "wait"}], "result": None},
        headers={"retry-after": retry_after},
    )


def server_error() -> httpx.Response:
    return httpx.Response(
        500, json={"success": False, "errors": [{"code": 1, "message": "boom"}], "result": None}
    )


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


async def test_opens_after_n_failures_and_fails_the_next_run_fast(
    api: respx.MockRouter, clock: FakeClock, logs: LogCapture
) -> None:
    route = api.get(VIDEO_PATH).mock(return_value=server_error())
    store = MemoryBreakerStore()

    # Run 1: three failing calls open the circuit; the fourth makes no request.
    async with stream().client(breaker_store=store, timing=clock.timing()) as c:
        for _ in range(3):
            with pytest.raises(RetryableApiError):
                await c.get_video("vid1")
        assert route.call_count == 3
        with pytest.raises(CircuitOpenError) as caught:
            await c.get_video("vid1")
        assert route.call_count == 3
        snapshot = c.breaker_snapshot()

    assert MESSAGE.match(str(caught.value)), str(caught.value)
    assert str(caught.value).startswith("circuit open for cloudflare_stream until 12:02:00Z")
    assert "boom" in str(caught.value)
    assert isinstance(caught.value, FatalApiError)
    assert snapshot["state"] == "open"
    assert [t["event"] for t in snapshot["transitions"]] == ["opened"]
    assert "Circuit for cloudflare_stream opened: 3 consecutive failures" in logs.text()

    # Run 2 (a new client, as a new process would make): fails fast without calling the API.
    clock.advance(60)
    async with stream().client(breaker_store=store, timing=clock.timing()) as c:
        with pytest.raises(CircuitOpenError):
            await c.get_video("vid1")
        assert c.calls == 0
    assert route.call_count == 3


async def test_after_cool_down_a_good_probe_closes(
    api: respx.MockRouter, clock: FakeClock, logs: LogCapture
) -> None:
    store = MemoryBreakerStore()
    until = clock.now() + timedelta(seconds=30)
    await store.save("cloudflare_stream", BreakerState("open", 3, until, "HTTP 500 boom"))
    route = api.get(VIDEO_PATH).mock(return_value=httpx.Response(200, json=OK))

    clock.advance(31)
    async with stream().client(breaker_store=store, timing=clock.timing()) as c:
        video = await c.get_video("vid1")
        assert video.parse_error is None and video.state == "ready"
        await c.get_video("vid1")
        snapshot = c.breaker_snapshot()

    assert route.call_count == 2
    assert snapshot["state"] == "closed"
    assert [t["event"] for t in snapshot["transitions"]] == ["half_open", "closed"]
    assert store.states["cloudflare_stream"] == BreakerState()
    assert "Circuit for cloudflare_stream closed" in logs.text()


async def test_a_failed_probe_reopens_after_exactly_one_request(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    store = MemoryBreakerStore()
    await store.save("cloudflare_stream", BreakerState("open", 3, clock.now(), "earlier"))
    route = api.get(VIDEO_PATH).mock(return_value=server_error())

    # max_attempts=3, yet the probe is a single request.
    async with stream(max_attempts=3).client(breaker_store=store, timing=clock.timing()) as c:
        with pytest.raises(RetryableApiError):
            await c.get_video("vid1")
        assert route.call_count == 1
        with pytest.raises(CircuitOpenError) as caught:
            await c.get_video("vid1")
    assert route.call_count == 1
    assert store.states["cloudflare_stream"].state == "open"
    assert store.states["cloudflare_stream"].opened_until == clock.now() + timedelta(seconds=120)
    assert "until 12:02:00Z" in str(caught.value)


async def test_concurrent_calls_wait_for_the_probe(api: respx.MockRouter, clock: FakeClock) -> None:
    store = MemoryBreakerStore()
    await store.save("cloudflare_stream", BreakerState("open", 3, clock.now(), "earlier"))
    route = api.get(VIDEO_PATH).mock(return_value=server_error())

    async with stream().client(breaker_store=store, timing=clock.timing()) as c:
        results = await asyncio.gather(
            *(c.get_video("vid1") for _ in range(4)), return_exceptions=True
        )
    assert route.call_count == 1
    assert sum(isinstance(r, RetryableApiError) for r in results) == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 3


async def test_permanent_item_errors_do_not_count(api: respx.MockRouter, clock: FakeClock) -> None:
    not_found = httpx.Response(
        404, json={"success": False, "errors": [{"code": 10005, "message": "nf"}], "result": None}
    )
    api.get(VIDEO_PATH).mock(
        side_effect=[server_error(), server_error(), not_found, server_error(), server_error()]
    )
    async with stream().client(timing=clock.timing()) as c:
        for expected in (RetryableApiError, RetryableApiError, PermanentApiError):
            with pytest.raises(expected):
                await c.get_video("vid1")
        for _ in range(2):
            with pytest.raises(RetryableApiError):
                await c.get_video("vid1")
        assert c.breaker_snapshot()["state"] == "closed"
        assert c.breaker_snapshot()["consecutive_failures"] == 2


async def test_a_long_retry_after_opens_at_once_for_that_long(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    api.get(VIDEO_PATH).mock(return_value=rate_limited(retry_after="300"))
    store = MemoryBreakerStore()
    async with stream(max_attempts=3).client(breaker_store=store, timing=clock.timing()) as c:
        with pytest.raises(RetryableApiError):
            await c.get_video("vid1")
        assert c.calls == 1
    state = store.states["cloudflare_stream"]
    assert state.state == "open"
    assert state.opened_until == clock.now() + timedelta(seconds=300)


async def test_short_429s_do_not_open_the_circuit(api: respx.MockRouter, clock: FakeClock) -> None:
    """A 429 asking for a second's pause is a working service pacing us (a neighbour on the key,
    the previous run's window): however many, the circuit stays closed; one 500 still counts."""
    api.get(VIDEO_PATH).mock(return_value=rate_limited(retry_after="1"))
    store = MemoryBreakerStore()
    async with stream(max_attempts=1).client(breaker_store=store, timing=clock.timing()) as c:
        for _ in range(10):
            with pytest.raises(RetryableApiError):
                await c.get_video("vid1")
        assert c.calls == 10
        assert c.breaker_snapshot()["state"] == "closed"
        assert c.breaker_snapshot()["consecutive_failures"] == 0
        api.get(VIDEO_PATH).mock(return_value=server_error())
        with pytest.raises(RetryableApiError):
            await c.get_video("vid1")
        assert c.breaker_snapshot()["consecutive_failures"] == 1


async def test_a_cancelled_probe_lets_the_next_call_probe(clock: FakeClock) -> None:
    store = MemoryBreakerStore()
    await store.save("svc", BreakerState("open", 3, clock.now(), "earlier"))
    breaker = CircuitBreaker("svc", store, threshold=3, cool_down=60, clock=clock.now)
    await breaker.load()
    assert await breaker.before_call() is True
    breaker.abandon_probe()
    assert await breaker.before_call() is True
    await breaker.record_success(probe=True)
    assert breaker.state == BreakerState()


async def test_a_probe_stopped_by_our_own_rate_limit_decides_nothing(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    store = MemoryBreakerStore()
    await store.save("cloudflare_stream", BreakerState("open", 3, clock.now(), "earlier"))
    route = api.get(VIDEO_PATH).mock(return_value=httpx.Response(200, json=OK))
    limited = stream(rate_limit_requests=1, rate_limit_window_s=600.0)
    async with limited.client(breaker_store=store, timing=clock.timing()) as c:
        c._caller.limiter.pause_for(600.0)
        with pytest.raises(ClientRateLimitedError):
            await c.get_video("vid1")
        assert route.call_count == 0
        assert c.breaker_snapshot()["state"] == "half_open"
        clock.advance(600.0)
        await c.get_video("vid1")
        assert c.breaker_snapshot()["state"] == "closed"


async def test_breaker_state_outlives_the_process_in_the_database(
    tmp_path: Path, clock: FakeClock
) -> None:
    url = f"sqlite:///{tmp_path / 'breakers.db'}"
    async with migrated_engine(url) as engine:
        assert await DatabaseBreakerStore(engine).load("resend") is None
        first = CircuitBreaker("resend", DatabaseBreakerStore(engine), threshold=1, clock=clock.now)
        await first.load()
        await first.record_failure(RetryableApiError("resend", 500, "server_error", "down"))
    # Another engine on the same database: what a later run in another process would see.
    async with migrated_engine(url) as engine:
        second = CircuitBreaker(
            "resend", DatabaseBreakerStore(engine), threshold=1, clock=clock.now
        )
        state = await second.load()
        assert state.state == "open"
        assert state.opened_until == datetime(2026, 3, 1, 12, 2, tzinfo=UTC)
        assert state.last_error is not None and "down" in state.last_error
        with pytest.raises(CircuitOpenError):
            await second.before_call()


async def test_resend_has_its_own_breaker(clock: FakeClock) -> None:
    store = MemoryBreakerStore()
    await store.save("resend", BreakerState("open", 5, clock.now() + timedelta(minutes=1), "x"))
    resource = ResendEmail(api_key=RESEND_KEY, base_url="https://resend.test")
    message = OutgoingEmail("a@b.test", ["c@d.test"], "s", "h", None)
    with respx.mock(assert_all_called=False) as router:
        route = router.post("https://resend.test/emails").respond(json={"id": "x"})
        async with resource.client(breaker_store=store, timing=clock.timing()) as c:
            with pytest.raises(CircuitOpenError, match=r"^circuit open for resend until 12:01:00Z"):
                await c.send(message)
        assert route.call_count == 0


def test_circuit_open_error_is_fatal_for_dagster(clock: FakeClock) -> None:
    error = CircuitOpenError("cloudflare_stream", clock.now(), "HTTP 500")
    failure = dagster_failure(error)
    assert failure.allow_retries is False
    assert (
        failure.description
        == "circuit open for cloudflare_stream until 12:00:00Z (last error: HTTP 500)"
    )
    retryable = dagster_failure(RetryableApiError("resend", 502, "http_502", "bad gateway"))
    assert retryable.allow_retries is True
