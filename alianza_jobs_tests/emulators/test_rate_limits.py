"""Rate limits and quotas: Cloudflare's 429 penalty, Resend's per-second window and its headers.

Windows are scaled down through the config and time is moved with the emulated clock: no sleeps.
"""

from __future__ import annotations

from alianza_jobs_tests.emulators.conftest import Emulator, email

GET_ONE = "GET /accounts/{account_id}/stream/{uid}"


async def test_cloudflare_429_blocks_every_call_for_the_penalty(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure(
        {
            "stream": {
                "rate_limit_requests": 5,
                "rate_limit_window_s": 10,
                "rate_limit_penalty_s": 30,
            }
        }
    )
    for _ in range(5):
        assert (await emulator.get_video(uid)).status_code == 200

    limited = await emulator.get_video(uid)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "30"
    body = limited.json()
    assert body["success"] is False
    assert body["errors"][0]["code"] == 971
    assert "throttling" in body["errors"][0]["message"]

    # The window has long passed, but the penalty has not: every call is still refused.
    await emulator.advance(12)
    still = await emulator.get_video(uid)
    assert still.status_code == 429
    assert still.headers["retry-after"] == "18"  # emulated time alone has passed: exactly 30 - 12
    assert (await emulator.list_videos()).status_code == 429

    await emulator.advance(19)
    assert (await emulator.get_video(uid)).status_code == 200
    counters = await emulator.counters()
    assert counters[("stream", GET_ONE, 200)] == 6
    assert counters[("stream", GET_ONE, 429)] == 2


async def test_cloudflare_limit_is_per_token(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"stream": {"rate_limit_requests": 2, "rate_limit_window_s": 60}})
    for _ in range(2):
        await emulator.get_video(uid)
    assert (await emulator.get_video(uid)).status_code == 429
    other = await emulator.get_video(uid, headers={"Authorization": "Bearer other-token"})
    assert other.status_code == 200


async def test_a_client_within_the_limit_is_never_refused(emulator: Emulator) -> None:
    """The window slides: exactly `limit` calls per window, forever, never meets a 429."""
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"stream": {"rate_limit_requests": 4, "rate_limit_window_s": 10}})
    for _ in range(3):
        for _ in range(4):
            assert (await emulator.get_video(uid)).status_code == 200
        await emulator.advance(10.01)


async def test_resend_rate_limit_headers_and_429(emulator: Emulator) -> None:
    await emulator.configure({"resend": {"rate_limit_requests": 2, "rate_limit_window_s": 1}})
    first = await emulator.send(email())
    assert first.status_code == 200
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    assert first.headers["ratelimit-reset"] == "1"
    second = await emulator.send(email(to="b@example.com"))
    assert second.headers["ratelimit-remaining"] == "0"

    third = await emulator.send(email(to="c@example.com"))
    assert third.status_code == 429
    assert third.json()["name"] == "rate_limit_exceeded"
    assert third.json()["statusCode"] == 429
    assert third.headers["retry-after"] == "1"
    assert third.headers["ratelimit-remaining"] == "0"

    await emulator.advance(1.01)
    assert (await emulator.send(email(to="c@example.com"))).status_code == 200
    inbox = await emulator.inbox()
    assert [e["to"] for e in inbox["emails"]] == [
        ["ana@example.com"],
        ["b@example.com"],
        ["c@example.com"],
    ]


async def test_resend_auth_failures_also_carry_ratelimit_headers(emulator: Emulator) -> None:
    response = await emulator.client.post(f"{emulator.root}/emails", json=email())
    assert response.status_code == 401
    assert response.headers["ratelimit-limit"] == "5"
    assert "ratelimit-remaining" in response.headers
    assert "ratelimit-reset" in response.headers


async def test_resend_daily_quota(emulator: Emulator) -> None:
    await emulator.configure({"resend": {"daily_quota": 3}})
    ok = await emulator.send_batch([email(to=f"u{i}@example.com") for i in range(2)])
    assert ok.status_code == 200
    over = await emulator.send_batch([email(to=f"v{i}@example.com") for i in range(2)])
    assert over.status_code == 429
    assert over.json()["name"] == "daily_quota_exceeded"
    assert "retry-after" not in over.headers  # not a rate limit: nothing to wait a second for
    assert len((await emulator.inbox())["emails"]) == 2
    assert (await emulator.send(email(to="w@example.com"))).status_code == 200

    await emulator.advance(24 * 3600)
    assert (await emulator.send_batch([email(to="x@example.com")] * 2)).status_code == 200
    assert len((await emulator.inbox())["emails"]) == 5


async def test_resend_monthly_quota(emulator: Emulator) -> None:
    await emulator.configure({"resend": {"monthly_quota": 1}})
    assert (await emulator.send(email())).status_code == 200
    over = await emulator.send(email(to="b@example.com"))
    assert over.status_code == 429
    assert over.json()["name"] == "monthly_quota_exceeded"
