"""Resend client against respx: sends, permissive batches, idempotency keys, errors, pacing."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx

from alianza_jobs.clients.http import (
    ApiError,
    FatalApiError,
    HeaderRateLimiter,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.resend import OutgoingEmail, ResendClient, idempotency_key_for
from alianza_jobs.resources import ResendEmail
from alianza_jobs_tests.clients.conftest import RESEND_KEY, FakeClock, LogCapture

BASE = "https://resend.test"


def email(n: int = 1, **changes: Any) -> OutgoingEmail:
    fields: dict[str, Any] = {
        "from_": "Alianza <jobs@alianza.test>",
        "to": [f"user{n}@example.com"],
        "subject": f"Hello {n}",
        "html": f"<p>Hello {n}</p>",
        "text": None,
    }
    fields.update(changes)
    return OutgoingEmail(**fields)


def resend_error(status: int, name: str, message: str = "nope", **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"statusCode": status, "name": name, "message": message}, headers=headers
    )


def resource(**overrides: Any) -> ResendEmail:
    settings: dict[str, Any] = {"api_key": RESEND_KEY, "base_url": BASE}
    settings.update(overrides)
    return ResendEmail(**settings)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[ResendClient]:
    async with resource().client(timing=clock.timing()) as c:
        yield c


# -- send -----------------------------------------------------------------------------------------------


async def test_send_posts_the_wire_format_with_a_derived_key(
    api: respx.MockRouter, client: ResendClient
) -> None:
    route = api.post("/emails").respond(json={"id": "em_1"})
    message = email(reply_to=["help@alianza.test"], tags=[{"name": "kind", "value": "welcome"}])

    assert await client.send(message) == "em_1"

    request = route.calls.last.request
    assert json.loads(request.content) == {
        "from": "Alianza <jobs@alianza.test>",
        "to": ["user1@example.com"],
        "subject": "Hello 1",
        "html": "<p>Hello 1</p>",
        "reply_to": ["help@alianza.test"],
        "tags": [{"name": "kind", "value": "welcome"}],
    }
    assert request.headers["idempotency-key"] == idempotency_key_for([message])
    assert request.headers["authorization"] == f"Bearer {RESEND_KEY}"
    assert client.calls == 1


async def test_send_uses_the_given_key(api: respx.MockRouter, client: ResendClient) -> None:
    route = api.post("/emails").respond(json={"id": "em_1"})
    await client.send(email(), idempotency_key="queue-row-42")
    assert route.calls.last.request.headers["idempotency-key"] == "queue-row-42"


async def test_a_retried_send_carries_the_same_key(
    api: respx.MockRouter, client: ResendClient
) -> None:
    route = api.post("/emails").mock(
        side_effect=[httpx.ReadTimeout("lost answer"), httpx.Response(200, json={"id": "em_1"})]
    )
    assert await client.send(email()) == "em_1"
    keys = {call.request.headers["idempotency-key"] for call in route.calls}
    assert len(route.calls) == 2 and len(keys) == 1


# -- idempotency keys ------------------------------------------------------------------------------------


def test_idempotency_key_is_stable_for_the_same_content() -> None:
    first = idempotency_key_for([email(1), email(2)])
    again = idempotency_key_for([email(1), email(2)])
    assert first == again
    assert len(first) == 64 and len(first) <= 256
    # Pinned: a key that changed between deploys would let a retry within 24 h send twice.
    canonical = (
        '{"emails":[{"from":"Alianza <jobs@alianza.test>","html":"<p>Hello 1</p>",'
        '"subject":"Hello 1","to":["user1@example.com"]}],"namespace":""}'
    )
    assert idempotency_key_for([email(1)]) == hashlib.sha256(canonical.encode()).hexdigest()
    assert idempotency_key_for([email(1)]) == (
        "2549f2b88851016db86f64c0d31021dcdd18262db842be746e6682d404cf4bc5"
    )


@pytest.mark.parametrize(
    "other",
    [
        [email(1, subject="Hello again"), email(2)],
        [email(1, to=["someone@example.com"]), email(2)],
        [email(1, html=None, text="Hello 1"), email(2)],
        [email(1, headers={"X-Entity-Ref-ID": "1"}), email(2)],
        [email(2), email(1)],
        [email(1)],
    ],
    ids=["subject", "to", "body", "headers", "order", "fewer"],
)
def test_idempotency_key_differs_for_different_content(other: list[OutgoingEmail]) -> None:
    assert idempotency_key_for(other) != idempotency_key_for([email(1), email(2)])


def test_idempotency_key_namespace() -> None:
    assert idempotency_key_for([email()], namespace="row:1") != idempotency_key_for(
        [email()], namespace="row:2"
    )


# -- batch ------------------------------------------------------------------------------------------------


async def test_batch_maps_permissive_errors_back_to_their_items(
    api: respx.MockRouter, client: ResendClient
) -> None:
    route = api.post("/emails/batch").respond(
        json={
            "data": [{"id": "em_0"}, {"id": "em_2"}, {"id": "em_4"}],
            "errors": [
                {"index": 1, "message": "The `to` field is missing."},
                {"index": 3, "message": "Invalid `from` field."},
            ],
        }
    )
    emails = [email(i) for i in range(5)]

    results = await client.send_batch(emails, idempotency_key="batch-key")

    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.id for r in results] == ["em_0", None, "em_2", None, "em_4"]
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert isinstance(results[1].error, PermanentApiError)
    assert "`to` field is missing" in str(results[1].error)
    assert results[3].error is not None and "Invalid `from`" in results[3].error.message
    request = route.calls.last.request
    assert request.headers["x-batch-validation"] == "permissive"
    assert request.headers["idempotency-key"] == "batch-key"
    assert json.loads(request.content) == [e.to_wire() for e in emails]


async def test_batch_all_accepted(api: respx.MockRouter, client: ResendClient) -> None:
    api.post("/emails/batch").respond(json={"data": [{"id": "a"}, {"id": "b"}]})
    results = await client.send_batch([email(1), email(2)], idempotency_key="k")
    assert [r.id for r in results] == ["a", "b"]
    assert all(r.error is None for r in results)


@pytest.mark.parametrize(
    "body",
    [
        {"data": [{"id": "a"}]},
        {"data": [{"id": "a"}, {"id": "b"}], "errors": [{"index": 0, "message": "bad"}]},
        {"data": [{"id": "a"}], "errors": [{"index": 7, "message": "bad"}]},
        {"data": [{"nope": 1}, {"id": "b"}]},
        {"errors": []},
    ],
    ids=["too-few-ids", "too-many", "index-out-of-range", "item-without-id", "no-data"],
)
async def test_batch_answers_that_do_not_add_up_are_malformed(
    api: respx.MockRouter, client: ResendClient, body: dict[str, Any]
) -> None:
    api.post("/emails/batch").respond(json=body)
    with pytest.raises(RetryableApiError) as caught:
        await client.send_batch([email(1), email(2)], idempotency_key="k")
    assert caught.value.code == "malformed_response"


async def test_batch_size_is_checked(client: ResendClient) -> None:
    assert await client.send_batch([], idempotency_key="k") == []
    with pytest.raises(ValueError, match="at most 100"):
        await client.send_batch([email(i) for i in range(101)], idempotency_key="k")
    with pytest.raises(ValueError, match="idempotency key"):
        await client.send_batch([email()], idempotency_key="")
    assert client.calls == 0


# -- error classes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "kind", "code", "calls"),
    [
        (httpx.ConnectError("refused"), RetryableApiError, "network_error", 3),
        (httpx.ReadTimeout("slow"), RetryableApiError, "timeout", 3),
        (resend_error(500, "internal_server_error"), RetryableApiError, "internal_server_error", 3),
        (httpx.Response(502, text="Bad Gateway"), RetryableApiError, "http_502", 3),
        (httpx.Response(200, text="<html>"), RetryableApiError, "malformed_response", 3),
        (httpx.Response(200, json={"ok": True}), RetryableApiError, "malformed_response", 3),
        (resend_error(422, "validation_error"), PermanentApiError, "validation_error", 1),
        (resend_error(400, "validation_error"), PermanentApiError, "validation_error", 1),
        (resend_error(401, "missing_api_key"), FatalApiError, "missing_api_key", 1),
        (resend_error(403, "invalid_api_key"), FatalApiError, "invalid_api_key", 1),
        (resend_error(429, "daily_quota_exceeded"), FatalApiError, "daily_quota_exceeded", 1),
        (resend_error(429, "monthly_quota_exceeded"), FatalApiError, "monthly_quota_exceeded", 1),
        (
            resend_error(409, "invalid_idempotent_request"),
            PermanentApiError,
            "invalid_idempotent_request",
            1,
        ),
        (
            resend_error(409, "concurrent_idempotent_requests"),
            RetryableApiError,
            "concurrent_idempotent_requests",
            3,
        ),
        (
            resend_error(429, "rate_limit_exceeded", **{"retry-after": "1"}),
            RetryableApiError,
            "rate_limit_exceeded",
            3,
        ),
    ],
    ids=[
        "network",
        "read-timeout",
        "500",
        "502",
        "malformed-json",
        "no-id",
        "422",
        "400",
        "401",
        "403",
        "daily-quota",
        "monthly-quota",
        "409-invalid",
        "409-concurrent",
        "429",
    ],
)
async def test_error_classes(
    api: respx.MockRouter,
    client: ResendClient,
    clock: FakeClock,
    response: httpx.Response | Exception,
    kind: type[ApiError],
    code: str,
    calls: int,
) -> None:
    route = api.post("/emails")
    if isinstance(response, Exception):
        route.side_effect = response
    else:
        route.return_value = response

    with pytest.raises(ApiError) as caught:
        await client.send(email())

    assert type(caught.value) is kind
    assert caught.value.code == code
    assert caught.value.service == "resend"
    assert route.call_count == calls == client.calls
    assert len(clock.sleeps) == calls - 1


async def test_concurrent_idempotent_request_waits_then_gets_the_answer(
    api: respx.MockRouter, client: ResendClient
) -> None:
    api.post("/emails").mock(
        side_effect=[
            resend_error(409, "concurrent_idempotent_requests"),
            httpx.Response(200, json={"id": "em_1"}),
        ]
    )
    assert await client.send(email()) == "em_1"


@pytest.mark.parametrize("as_date", [False, True], ids=["seconds", "http-date"])
async def test_429_waits_for_retry_after(
    api: respx.MockRouter, client: ResendClient, clock: FakeClock, as_date: bool
) -> None:
    value = format_datetime(clock.now() + timedelta(seconds=4), usegmt=True) if as_date else "4"
    api.post("/emails").mock(
        side_effect=[
            resend_error(429, "rate_limit_exceeded", **{"retry-after": value}),
            httpx.Response(200, json={"id": "em_1"}),
        ]
    )
    assert await client.send(email()) == "em_1"
    assert clock.sleeps == [4.0]


async def test_api_key_never_in_errors_or_logs(
    api: respx.MockRouter, client: ResendClient, logs: LogCapture
) -> None:
    api.post("/emails").mock(
        side_effect=[
            resend_error(500, "internal_server_error", f"key {RESEND_KEY} broke us"),
            resend_error(403, "invalid_api_key", f"API key {RESEND_KEY} is invalid"),
        ]
    )
    with pytest.raises(FatalApiError) as caught:
        await client.send(email())
    assert logs.lines
    for text in (str(caught.value), repr(caught.value), logs.text()):
        assert RESEND_KEY not in text


# -- pacing from ratelimit-* headers ---------------------------------------------------------------------


class WindowedServer:
    """Resend-like fixed one-second windows of ``limit`` requests, with ratelimit-* headers."""

    def __init__(self, clock: FakeClock, limit: int, window: float = 1.0) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.counts: dict[int, int] = {}
        self.remaining_seen: list[int] = []
        self.rejected = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.clock.monotonic()
        index = math.floor(now / self.window + 1e-9)
        used = self.counts.get(index, 0) + 1
        reset = max(0.0, (index + 1) * self.window - now)
        headers = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-reset": f"{reset:.3f}",
        }
        if used > self.limit:
            self.rejected += 1
            headers["retry-after"] = f"{reset:.3f}"
            headers["ratelimit-remaining"] = "0"
            return resend_error(429, "rate_limit_exceeded", **headers)
        self.counts[index] = used
        remaining = self.limit - used
        self.remaining_seen.append(remaining)
        headers["ratelimit-remaining"] = str(remaining)
        return httpx.Response(200, json={"id": f"em_{sum(self.counts.values())}"}, headers=headers)


async def test_pacing_uses_the_window_budget_without_a_429(
    api: respx.MockRouter, client: ResendClient, clock: FakeClock
) -> None:
    server = WindowedServer(clock, limit=5)
    api.post("/emails").mock(side_effect=server)

    for i in range(20):
        await client.send(email(i))

    assert server.rejected == 0
    # The whole budget of each window is used, then the client waits for the next window (and its
    # margin: it paces from its own answers, not from the server's window edges).
    assert sorted(server.counts.values()) == [5, 5, 5, 5]
    assert min(server.remaining_seen) == 0
    assert clock.monotonic() <= 3 * (1.0 + HeaderRateLimiter.MARGIN_S) + 1e-6


async def test_without_pacing_the_same_server_would_reject(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    # The control for the test above: the server really does reject a burst.
    server = WindowedServer(clock, limit=5)
    api.post("/emails").mock(side_effect=server)
    async with httpx.AsyncClient(base_url=BASE) as raw:
        statuses = [(await raw.post("/emails", json={})).status_code for _ in range(6)]
    assert statuses.count(429) == 1


async def test_resend_emulator_base_url_and_timeouts() -> None:
    async with resource(connect_timeout_s=1.5, read_timeout_s=9.0).client() as c:
        http = c._caller.http
        assert (http.timeout.connect, http.timeout.read) == (1.5, 9.0)


class SlidingServer:
    """Resend-like sliding one-second window that, like Resend, rounds ``reset`` up to seconds."""

    def __init__(self, clock: FakeClock, limit: int, *, stalls: dict[int, float] | None = None):
        self.clock = clock
        self.limit = limit
        self.stalls = stalls or {}  # request number -> seconds it takes to reach the server
        self.sent: list[float] = []
        self.rejected = 0
        self.requests = 0

    LATENCY_S = 0.05

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.clock.advance(self.stalls.get(self.requests, 0.0))
        self.requests += 1
        now = self.clock.monotonic()
        self.clock.advance(self.LATENCY_S)  # the answer comes back a little later
        window = [t for t in self.sent if t > now - 1.0]
        reset = math.ceil(window[0] + 1.0 - now - self.LATENCY_S) if window else 1
        headers = {"ratelimit-limit": str(self.limit), "ratelimit-reset": str(max(reset, 1))}
        if len(window) >= self.limit:
            self.rejected += 1
            headers["ratelimit-remaining"] = "0"
            headers["retry-after"] = "1"
            return resend_error(429, "rate_limit_exceeded", **headers)
        self.sent.append(now)
        headers["ratelimit-remaining"] = str(self.limit - len(window) - 1)
        return httpx.Response(200, json={"id": f"em_{len(self.sent)}"}, headers=headers)


async def test_pacing_is_not_slowed_by_a_rounded_up_reset(
    api: respx.MockRouter, client: ResendClient, clock: FakeClock
) -> None:
    server = SlidingServer(clock, limit=5)
    api.post("/emails").mock(side_effect=server)

    for i in range(25):
        await client.send(email(i))

    assert server.rejected == 0
    # 25 requests at 5 per sliding second, 50 ms each: a window's slots age from their answers, so
    # each window opens a second (plus margin) after the first answer of the one before; the 5th
    # opens just after 4.2 s and its 5 requests take 0.25 s. Waiting the announced (rounded-up)
    # reset from the last answer instead costs 1.25 s per window: over 6 s.
    margin, latency = HeaderRateLimiter.MARGIN_S, SlidingServer.LATENCY_S
    assert clock.monotonic() <= 4 * (1.0 + margin + latency) + 5 * latency + 1e-6


async def test_pacing_holds_when_requests_reach_the_server_late(
    api: respx.MockRouter, client: ResendClient, clock: FakeClock
) -> None:
    """The server stamps a request anywhere between our send and its answer. Here the first of
    some windows stalls 0.5 s on its way: pacing from send times had the next window's first
    request refused (seen in CI), pacing from answer times does not."""
    server = SlidingServer(clock, limit=5, stalls={n: 0.5 for n in (0, 10, 20)})
    api.post("/emails").mock(side_effect=server)

    for i in range(25):
        await client.send(email(i))

    assert server.rejected == 0
    assert len(server.sent) == 25
