"""Injected faults: seeded and reproducible, and each one looks like the real failure."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from alianza_jobs.emulators.config import StreamSettings
from alianza_jobs.emulators.faults import plan_faults
from alianza_jobs_tests.emulators.conftest import Emulator, email

GET_ONE = "GET /accounts/{account_id}/stream/{uid}"
FAULTS = {"error_rate": 0.25, "malformed_rate": 0.15, "reset_rate": 0.1}


async def _outcomes(emulator: Emulator, uid: str, n: int) -> list[str]:
    seen = []
    for _ in range(n):
        try:
            response = await emulator.get_video(uid)
        except httpx.TransportError:
            seen.append("reset")
            continue
        if response.status_code >= 500:
            seen.append(str(response.status_code))
            continue
        try:
            response.json()
        except json.JSONDecodeError:
            seen.append("malformed")
            continue
        seen.append(str(response.status_code))
    return seen


async def test_seeded_faults_repeat_exactly(emulator: Emulator) -> None:
    async def run(seed: int) -> list[str]:
        await emulator.admin("POST", "/reset")
        (uid,) = await emulator.add_videos({"uid": "ab" * 16})
        await emulator.configure({"seed": seed, "stream": FAULTS})
        return await _outcomes(emulator, uid, 60)

    first = await run(7)
    assert await run(7) == first
    assert {"200", "malformed", "reset"} <= set(first)
    assert set(first) & {"500", "502", "503"}
    other = await run(8)
    assert other != first
    counters = await emulator.counters()
    assert sum(counters.values()) == 60
    assert counters.get(("stream", GET_ONE, 0), 0) == other.count("reset")
    assert counters.get(("stream", GET_ONE, 200), 0) == other.count("200") + other.count(
        "malformed"
    )


async def test_500_is_an_envelope_and_gateway_errors_are_html(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"stream": {"error_rate": 1.0, "error_statuses": [500]}})
    failed = await emulator.get_video(uid)
    assert failed.status_code == 500
    assert failed.json()["success"] is False

    await emulator.configure({"stream": {"error_statuses": [502]}})
    gateway = await emulator.get_video(uid)
    assert gateway.status_code == 502
    assert gateway.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in gateway.text


async def test_malformed_json_keeps_status_and_content_type(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"stream": {"malformed_rate": 1.0}})
    response = await emulator.get_video(uid)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_reset_is_a_transport_error(emulator: Emulator) -> None:
    await emulator.configure({"resend": {"reset_rate": 1.0}})
    with pytest.raises(httpx.TransportError):
        await emulator.send(email())


@pytest.mark.parametrize(("after", "delivered"), [(0.0, 0), (1.0, 1)])
async def test_faults_strike_before_or_after_the_send(
    emulator: Emulator, after: float, delivered: int
) -> None:
    await emulator.configure(
        {
            "resend": {
                "error_rate": 1.0,
                "error_statuses": [503],
                "fault_after_processing_share": after,
            }
        }
    )
    response = await emulator.send(email())
    assert response.status_code == 503
    assert len((await emulator.inbox())["emails"]) == delivered


async def test_latency_is_spent_without_blocking_other_requests(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"stream": {"latency_ms": 1000}})
    started = time.monotonic()
    responses = await asyncio.gather(*(emulator.get_video(uid) for _ in range(4)))
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert elapsed >= 1.0
    # Four concurrent requests take about one latency: the sleeps overlap. One after another they
    # would take four; the 3 s between leave a loaded machine room for everything else.
    assert elapsed < 4 * 1.0


async def test_slow_responses_outlast_a_client_timeout(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"seed": 1, "stream": {"slow_rate": 1.0, "slow_ms": 300}})
    started = time.monotonic()
    assert (await emulator.get_video(uid)).status_code == 200
    assert time.monotonic() - started >= 0.3
    # httpx.ASGITransport ignores httpx timeouts: in-process, only an asyncio timeout (the task
    # runtime's) bounds a call. Over a socket both do.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await emulator.get_video(uid)
    if emulator.mode == "socket":
        with pytest.raises(httpx.ReadTimeout):
            await emulator.get_video(uid, timeout=0.05)
    else:
        # The abandoned request is still counted, as 499 (client closed request).
        deadline = time.monotonic() + 30
        while ("stream", GET_ONE, 499) not in await emulator.counters():
            assert time.monotonic() < deadline, "the abandoned request was never counted"
            await asyncio.sleep(0.01)


async def test_slow_rate_is_a_share(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"seed": 3, "stream": {"slow_rate": 0.5, "slow_ms": 400}})
    settings = StreamSettings(slow_rate=0.5, slow_ms=400)
    # Which requests are slow is seeded: requests 2-6 of these 12.
    planned = [
        plan_faults(settings, seed=3, service="stream", seq=n).delay_s > 0 for n in range(1, 13)
    ]
    assert sum(planned) == 5
    slow = 0
    for is_slow in planned:
        started = time.monotonic()
        await emulator.get_video(uid)
        took = time.monotonic() - started
        assert took >= 0.4 or not is_slow  # a slow one is never faster than slow_ms
        # Counted by duration: a prompt answer would need 400 ms of load to pass for a slow one.
        slow += took >= 0.4
    assert 2 <= slow <= 10
