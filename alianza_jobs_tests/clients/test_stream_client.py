"""Cloudflare Stream client against respx: parsing, every error class, retries, paging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx

from alianza_jobs.clients.http import (
    ApiError,
    ClientRateLimitedError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.stream import StreamClient, parse_video
from alianza_jobs.resources import CloudflareStream
from alianza_jobs_tests.clients.conftest import STREAM_TOKEN, FakeClock, LogCapture

BASE = "https://cf.test/client/v4"
ACCOUNT = "acc123"
VIDEO_PATH = f"/accounts/{ACCOUNT}/stream/vid1"
LIST_PATH = f"/accounts/{ACCOUNT}/stream"


def video_json(
    uid: str = "vid1",
    state: str = "ready",
    created: str = "2026-01-01T00:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {"state": state, "pctComplete": "100.000000"}
    status.update(extra.pop("status_extra", {}))
    return {
        "uid": uid,
        "status": status,
        "duration": 12.5,
        "created": created,
        "modified": created,
        "readyToStream": state == "ready",
        "meta": {"name": f"{uid}.mp4"},
        **extra,
    }


def envelope(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def failure(status: int, code: int, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"success": False, "errors": [{"code": code, "message": message}], "result": None},
        headers=headers,
    )


def resource(**overrides: Any) -> CloudflareStream:
    settings: dict[str, Any] = {
        "account_id": ACCOUNT,
        "api_token": STREAM_TOKEN,
        "base_url": BASE,
        "breaker_failure_threshold": 50,
    }
    settings.update(overrides)
    return CloudflareStream(**settings)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[StreamClient]:
    async with resource().client(timing=clock.timing()) as c:
        yield c


# -- parsing ----------------------------------------------------------------------------------------


async def test_get_video_parses_the_result(api: respx.MockRouter, client: StreamClient) -> None:
    payload = video_json(state="inprogress", status_extra={"pctComplete": "55.5"})
    route = api.get(VIDEO_PATH).respond(json=envelope(payload))

    video = await client.get_video("vid1")

    assert video.uid == "vid1"
    assert video.state == "inprogress"
    assert video.pct_complete == 55.5
    assert video.duration == 12.5
    assert video.created == datetime(2026, 1, 1, tzinfo=UTC)
    assert video.ready_to_stream is False
    assert video.meta == {"name": "vid1.mp4"}
    assert video.raw == payload
    assert video.parse_error is None
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {STREAM_TOKEN}"
    assert client.calls == 1


async def test_duration_minus_one_means_unknown(
    api: respx.MockRouter, client: StreamClient
) -> None:
    api.get(VIDEO_PATH).respond(json=envelope(video_json(state="queued", duration=-1)))
    video = await client.get_video("vid1")
    assert video.duration is None
    assert video.state == "queued"


@pytest.mark.parametrize("prefix", ["errorReason", "errReason"])
async def test_error_reason_in_both_spellings(
    api: respx.MockRouter, client: StreamClient, prefix: str
) -> None:
    status = {f"{prefix}Code": "ERR_NON_VIDEO", f"{prefix}Text": "The file was not a video"}
    api.get(VIDEO_PATH).respond(json=envelope(video_json(state="error", status_extra=status)))

    video = await client.get_video("vid1")

    assert video.parse_error is None and video.state == "error"
    assert video.error_reason_code == "ERR_NON_VIDEO"
    assert video.error_reason_text == "The file was not a video"
    assert video.error_reason == "ERR_NON_VIDEO: The file was not a video"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"uid": None}, "missing uid"),
        ({"status": None}, "missing status"),
        ({"status": {"state": "exploded"}}, "unknown state 'exploded'"),
        ({"duration": "12.5"}, "duration is not a number"),
        ({"created": "yesterday"}, "unreadable created"),
    ],
)
def test_malformed_item_is_reported_not_raised(change: dict[str, Any], problem: str) -> None:
    raw = {**video_json(), **change}
    video = parse_video(raw)
    assert video.parse_error is not None
    assert problem in video.parse_error
    assert not (video.parse_error is None and video.state == "ready")
    with pytest.raises(PermanentApiError) as caught:
        video.require_valid()
    assert caught.value.code == "malformed_item"


def test_non_object_item() -> None:
    video = parse_video(["not", "a", "video"])
    assert video.parse_error is not None and "not a JSON object" in video.parse_error


async def test_get_video_with_malformed_item_fails_that_item_without_retries(
    api: respx.MockRouter, client: StreamClient
) -> None:
    api.get(VIDEO_PATH).respond(json=envelope(video_json(duration="long")))
    with pytest.raises(PermanentApiError) as caught:
        await client.get_video("vid1")
    assert caught.value.code == "malformed_item"
    assert client.calls == 1


# -- error classes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "kind", "code", "calls"),
    [
        (httpx.ConnectError("connection refused"), RetryableApiError, "network_error", 3),
        (httpx.ReadTimeout("timed out"), RetryableApiError, "timeout", 3),
        (failure(500, 10000, "Internal error"), RetryableApiError, "server_error", 3),
        (failure(502, 10000, "Bad gateway"), RetryableApiError, "server_error", 3),
        (
            httpx.Response(502, text="<html>Bad Gateway</html>"),
            RetryableApiError,
            "server_error",
            3,
        ),
        (httpx.Response(200, text="{not json"), RetryableApiError, "malformed_response", 3),
        (httpx.Response(200, json={"hello": 1}), RetryableApiError, "malformed_response", 3),
        (
            httpx.Response(
                200,
                json={"success": False, "errors": [{"code": 1, "message": "x"}], "result": None},
            ),
            RetryableApiError,
            "unsuccessful_envelope",
            3,
        ),
        (failure(404, 10005, "Video not found"), PermanentApiError, "not_found", 1),
        (failure(422, 10010, "Invalid uid"), PermanentApiError, "validation_error", 1),
        (failure(401, 10000, "Authentication error"), FatalApiError, "unauthorized", 1),
        (failure(403, 10000, "Forbidden"), FatalApiError, "forbidden", 1),
        (failure(402, 10011, "Storage quota exceeded"), FatalApiError, "quota_exceeded", 1),
    ],
    ids=[
        "network",
        "read-timeout",
        "500",
        "502",
        "502-html",
        "malformed-json",
        "not-an-envelope",
        "success-false",
        "404",
        "422",
        "401",
        "403",
        "quota",
    ],
)
async def test_error_classes(
    api: respx.MockRouter,
    client: StreamClient,
    clock: FakeClock,
    response: httpx.Response | Exception,
    kind: type[ApiError],
    code: str,
    calls: int,
) -> None:
    route = api.get(VIDEO_PATH)
    if isinstance(response, Exception):
        route.side_effect = response
    else:
        route.return_value = response

    with pytest.raises(ApiError) as caught:
        await client.get_video("vid1")

    assert type(caught.value) is kind
    assert caught.value.code == code
    assert caught.value.service == "cloudflare_stream"
    assert route.call_count == calls == client.calls
    assert len(clock.sleeps) == calls - 1
    if code == "not_found":
        assert "[10005] Video not found" in str(caught.value)


async def test_backoff_grows_with_jitter(api: respx.MockRouter, clock: FakeClock) -> None:
    api.get(VIDEO_PATH).respond(500, json={"success": False, "errors": [], "result": None})
    clock.rand = 1.0
    async with resource(max_attempts=4).client(timing=clock.timing()) as c:
        with pytest.raises(RetryableApiError):
            await c.get_video("vid1")
    # base 0.5 s doubling; jitter keeps each wait within [step/2, step].
    assert clock.sleeps == [0.5, 1.0, 2.0]
    clock.rand, clock.sleeps = 0.0, []
    async with resource(max_attempts=4).client(timing=clock.timing()) as c:
        with pytest.raises(RetryableApiError):
            await c.get_video("vid1")
    assert clock.sleeps == [0.25, 0.5, 1.0]


async def test_transient_failure_then_success(
    api: respx.MockRouter, client: StreamClient, clock: FakeClock, logs: LogCapture
) -> None:
    api.get(VIDEO_PATH).mock(
        side_effect=[
            httpx.ReadTimeout("slow"),
            httpx.Response(200, text="<html>proxy</html>"),
            httpx.Response(200, json=envelope(video_json())),
        ]
    )
    video = await client.get_video("vid1")
    assert video.parse_error is None and video.state == "ready"
    assert client.calls == 3
    assert client.retries == 2
    assert len(clock.sleeps) == 2
    assert logs.text().count("cloudflare_stream call failed, retrying") == 2


async def test_429_retry_after_seconds_is_honoured(
    api: respx.MockRouter, client: StreamClient, clock: FakeClock
) -> None:
    api.get(VIDEO_PATH).mock(
        side_effect=[
            failure(429, 971, "Please wait", **{"retry-after": "7"}),
            httpx.Response(200, json=envelope(video_json())),
        ]
    )
    video = await client.get_video("vid1")
    assert video.uid == "vid1"
    assert clock.sleeps == [7.0]


async def test_429_retry_after_http_date_is_honoured(
    api: respx.MockRouter, client: StreamClient, clock: FakeClock
) -> None:
    when = format_datetime(clock.now() + timedelta(seconds=12), usegmt=True)
    api.get(VIDEO_PATH).mock(
        side_effect=[
            failure(429, 971, "Please wait", **{"retry-after": when}),
            httpx.Response(200, json=envelope(video_json())),
        ]
    )
    await client.get_video("vid1")
    assert clock.sleeps == [12.0]


async def test_503_retry_after_is_honoured_too(
    api: respx.MockRouter, client: StreamClient, clock: FakeClock
) -> None:
    api.get(VIDEO_PATH).mock(
        side_effect=[
            failure(503, 10000, "maintenance", **{"retry-after": "3"}),
            httpx.Response(200, json=envelope(video_json())),
        ]
    )
    await client.get_video("vid1")
    assert clock.sleeps == [3.0]


async def test_long_retry_after_fails_at_once_and_holds_back_the_client(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    route = api.get(VIDEO_PATH)
    route.return_value = failure(429, 971, "Please wait", **{"retry-after": "300"})
    async with resource(max_retry_wait_s=30).client(timing=clock.timing()) as c:
        with pytest.raises(RetryableApiError) as caught:
            await c.get_video("vid1")
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.retry_after == 300
        assert clock.sleeps == []
        assert route.call_count == 1


# -- secrets ------------------------------------------------------------------------------------------


async def test_token_never_in_errors_or_logs(
    api: respx.MockRouter, client: StreamClient, logs: LogCapture
) -> None:
    echo = f"token {STREAM_TOKEN} is invalid (Authorization: Bearer {STREAM_TOKEN})"
    api.get(VIDEO_PATH).mock(
        side_effect=[
            httpx.ConnectError(f"could not connect with {STREAM_TOKEN}"),
            failure(500, 10000, echo),
            failure(401, 10000, echo),
        ]
    )
    with pytest.raises(FatalApiError) as caught:
        await client.get_video("vid1")

    texts = [str(caught.value), repr(caught.value), caught.value.message, logs.text()]
    assert logs.lines, "the retries should have been logged"
    for text in texts:
        assert STREAM_TOKEN not in text
    assert "***" in caught.value.message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


# -- listing --------------------------------------------------------------------------------------------


class FakeCatalog:
    """Stream's list semantics: asc/desc by created, exclusive after/before, limit, status."""

    def __init__(self, videos: list[dict[str, Any]], *, ignore_after: bool = False) -> None:
        self.videos = videos
        self.ignore_after = ignore_after
        self.requests: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.requests.append(params)
        items = list(self.videos)
        if "status" in params:
            items = [v for v in items if v["status"]["state"] == params["status"]]
        if "after" in params and not self.ignore_after:
            after = datetime.fromisoformat(params["after"])
            items = [v for v in items if datetime.fromisoformat(v["created"]) > after]
        if "before" in params:
            before = datetime.fromisoformat(params["before"])
            items = [v for v in items if datetime.fromisoformat(v["created"]) < before]
        asc = params.get("asc") == "true"
        # Stable sort: ties keep insertion order, as a database's secondary key would.
        items.sort(key=lambda v: datetime.fromisoformat(v["created"]), reverse=not asc)
        limit = int(params.get("limit", "1000"))
        return httpx.Response(200, json={**envelope(items[:limit]), "total": len(items)})


def ts(minute: int, micro: int = 0) -> str:
    return (
        (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute, microseconds=micro))
        .isoformat()
        .replace("+00:00", "Z")
    )


async def test_list_pages_by_creation_time_and_yields_each_once(
    api: respx.MockRouter, client: StreamClient
) -> None:
    videos = [video_json(f"v{i:02d}", created=ts(i)) for i in range(10)]
    catalog = FakeCatalog(videos)
    api.get(LIST_PATH).mock(side_effect=catalog)

    got = [v.uid async for v in client.list_videos(page_size=4)]

    assert got == [f"v{i:02d}" for i in range(10)]
    assert all(r["asc"] == "true" and r["limit"] == "4" for r in catalog.requests)
    assert "after" not in catalog.requests[0]
    # Each next page starts just before the last `created` seen (ties are re-read, then dropped).
    assert catalog.requests[1]["after"] == ts(3, -1)
    # Pages overlap by the boundary video: v00-v03, v03-v06, v06-v09, then v09 alone (short page).
    assert client.calls == len(catalog.requests) == 4


async def test_ties_straddling_pages_are_not_lost(
    api: respx.MockRouter, client: StreamClient
) -> None:
    created = [ts(0), ts(1), ts(1), ts(1), ts(2), ts(2), ts(3)]
    videos = [video_json(f"v{i}", created=c) for i, c in enumerate(created)]
    api.get(LIST_PATH).mock(side_effect=FakeCatalog(videos))

    got = [v.uid async for v in client.list_videos(page_size=3)]

    assert sorted(got) == [f"v{i}" for i in range(7)]
    assert len(got) == len(set(got))


async def test_a_page_full_of_one_timestamp_terminates_and_moves_on(
    api: respx.MockRouter, client: StreamClient, logs: LogCapture
) -> None:
    videos = [video_json(f"tie{i}", created=ts(5)) for i in range(4)]
    videos += [video_json("later", created=ts(6))]
    catalog = FakeCatalog(videos)
    api.get(LIST_PATH).mock(side_effect=catalog)

    got = [v.uid async for v in client.list_videos(page_size=3)]

    # A page of 3 ties: the fourth cannot be reached without a cursor; the rest still is.
    assert got == ["tie0", "tie1", "tie2", "later"]
    assert "shares one `created` timestamp" in logs.text()
    assert len(catalog.requests) == 3


async def test_a_server_ignoring_after_cannot_loop_us_forever(
    api: respx.MockRouter, client: StreamClient
) -> None:
    videos = [video_json(f"v{i}", created=ts(i)) for i in range(5)]
    catalog = FakeCatalog(videos, ignore_after=True)
    api.get(LIST_PATH).mock(side_effect=catalog)

    got = [v.uid async for v in client.list_videos(page_size=2)]

    assert got == ["v0", "v1"]
    assert len(catalog.requests) <= 3


async def test_descending_listing_with_filters(api: respx.MockRouter, client: StreamClient) -> None:
    videos = [
        video_json(f"v{i}", created=ts(i), state="ready" if i % 2 else "queued") for i in range(9)
    ]
    catalog = FakeCatalog(videos)
    api.get(LIST_PATH).mock(side_effect=catalog)
    lower = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)

    got = [
        v.uid async for v in client.list_videos(status="ready", after=lower, asc=False, page_size=2)
    ]

    assert got == ["v7", "v5", "v3"]
    first = catalog.requests[0]
    assert first["asc"] == "false"
    assert first["status"] == "ready"
    assert first["after"] == "2026-01-01T00:01:00Z"
    assert "before" not in first
    assert all(r["after"] == "2026-01-01T00:01:00Z" for r in catalog.requests)
    assert catalog.requests[1]["before"] == ts(5, 1)


async def test_listing_surfaces_bad_items_and_continues(
    api: respx.MockRouter, client: StreamClient
) -> None:
    videos = [
        video_json("good1", created=ts(0)),
        {**video_json("bad-duration", created=ts(1)), "duration": "n/a"},
        {**video_json("", created=ts(2))},
        video_json("good2", created=ts(3)),
    ]
    api.get(LIST_PATH).mock(side_effect=FakeCatalog(videos))

    got = [v async for v in client.list_videos()]

    assert [v.uid for v in got] == ["good1", "bad-duration", "", "good2"]
    assert [v.parse_error is None for v in got] == [True, False, False, True]


async def test_listing_rejects_bad_arguments(client: StreamClient) -> None:
    with pytest.raises(ValueError, match="page_size"):
        [v async for v in client.list_videos(page_size=1001)]
    with pytest.raises(ValueError, match="status"):
        [v async for v in client.list_videos(status="finished")]


async def test_list_page_that_is_not_a_list_is_retryable(
    api: respx.MockRouter, client: StreamClient
) -> None:
    api.get(LIST_PATH).respond(json=envelope({"uid": "x"}))
    with pytest.raises(RetryableApiError) as caught:
        [v async for v in client.list_videos()]
    assert caught.value.code == "malformed_response"


# -- rate limit and concurrency ----------------------------------------------------------------------


async def test_many_calls_never_exceed_the_configured_limit(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(clock.monotonic())
        return httpx.Response(200, json=envelope(video_json()))

    api.get(VIDEO_PATH).mock(side_effect=answer)
    limit, window = 10, 60.0
    settings = {
        "rate_limit_requests": limit,
        "rate_limit_window_s": window,
        "rate_limit_margin_s": 0.0,
    }
    # Calls may wait a whole window here; the default cap (30 s) is covered by the next test.
    async with resource(**settings, max_retry_wait_s=window).client(timing=clock.timing()) as c:
        # Sequential and concurrent callers both go through the one limiter.
        for _ in range(15):
            await c.get_video("vid1")
        await asyncio.gather(*(c.get_video("vid1") for _ in range(30)))
        assert c.calls == 45

    assert len(sent) == 45
    for i in range(len(sent) - limit):
        assert sent[i + limit] - sent[i] >= window, f"more than {limit} calls within {window} s"
    # ...and it is not slower than it has to be: a full window's worth goes out at each step.
    assert sent[-1] == pytest.approx(4 * window)


async def test_a_spent_budget_stops_the_call_instead_of_outwaiting_the_task(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    route = api.get(VIDEO_PATH).respond(json=envelope(video_json()))
    async with resource(
        rate_limit_requests=2,
        rate_limit_window_s=60.0,
        rate_limit_margin_s=0.0,
        max_retry_wait_s=30.0,
    ).client(timing=clock.timing()) as c:
        await c.get_video("vid1")
        clock.advance(10)
        await c.get_video("vid1")
        with pytest.raises(ClientRateLimitedError) as caught:
            await c.get_video("vid1")
        assert isinstance(caught.value, RetryableApiError)
        assert caught.value.retry_after == pytest.approx(50.0)
        assert clock.sleeps == []
        assert route.call_count == c.calls == 2
        # Our own limit says nothing about the service: the breaker did not count it.
        assert c.breaker_snapshot()["consecutive_failures"] == 0
        # Once the window has room again, calls go through.
        clock.advance(50)
        await c.get_video("vid1")
        assert route.call_count == 3


async def test_a_429_holds_back_the_next_call(api: respx.MockRouter, clock: FakeClock) -> None:
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(clock.monotonic())
        if len(sent) == 1:
            return failure(429, 971, "Please wait", **{"retry-after": "20"})
        return httpx.Response(200, json=envelope(video_json()))

    api.get(VIDEO_PATH).mock(side_effect=answer)
    async with resource(max_attempts=1).client(timing=clock.timing()) as c:
        with pytest.raises(RetryableApiError):
            await c.get_video("vid1")
        video = await c.get_video("vid1")
    assert video.parse_error is None and video.state == "ready"
    assert sent == [0.0, 20.0]


async def test_in_flight_requests_are_bounded(api: respx.MockRouter) -> None:
    in_flight = 0
    peak = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1
        return httpx.Response(200, json=envelope(video_json()))

    api.get(VIDEO_PATH).mock(side_effect=answer)
    async with resource(max_concurrency=3).client() as c:
        await asyncio.gather(*(c.get_video("vid1") for _ in range(12)))
    assert peak == 3


async def test_resource_sets_explicit_timeouts() -> None:
    async with resource(connect_timeout_s=2.5, read_timeout_s=11.0).client() as c:
        http = c._caller.http
        assert http.timeout.connect == 2.5
        assert http.timeout.read == 11.0
        assert str(http.base_url) == BASE + "/"


async def test_each_answered_call_is_one_debug_line_at_log_level_debug(
    api: respx.MockRouter,
    client: StreamClient,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api.get(VIDEO_PATH).mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json=envelope(video_json()))]
    )
    await client.get_video("vid1")
    assert "call answered" not in logs.text()  # info, the default, leaves it out
    monkeypatch.setenv("LOG_LEVEL", "debug")
    api.get(VIDEO_PATH).mock(return_value=httpx.Response(200, json=envelope(video_json())))
    await client.get_video("vid1")
    [line] = [line for line in logs.lines if "call answered" in line]
    assert line.startswith("DEBUG cloudflare_stream call answered")
    assert '"method": "GET"' in line and '"attempt": 1' in line
