"""``StreamClient.set_webhook``: against respx (the wire format, malformed answers, refusals) and
against the emulator in-process (a registration the emulator then delivers to)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from alianza_jobs.clients.http import (
    ApiError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.stream import StreamClient, WebhookRegistration
from alianza_jobs.clients.webhooks import HEADER, verify_stream_webhook
from alianza_jobs.emulators import EMULATOR_ACCOUNT_ID, StreamEmulator
from alianza_jobs.emulators.constants import EMULATOR_WEBHOOK_SECRET
from alianza_jobs.resources import CloudflareStream, EmulatedCloudflareStream
from alianza_jobs_tests.clients.conftest import STREAM_TOKEN, FakeClock, LogCapture

BASE = "https://cf.test/client/v4"
ACCOUNT = "acc123"
WEBHOOK_PATH = f"/accounts/{ACCOUNT}/stream/webhook"
HOOK_URL = "https://jobs.alianza.test/webhooks/stream"
SECRET = "85011ed3a913c6ad5f9cf6c5573cc0a7"
FROZEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()  # the emulator's clock


def envelope(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def registration(**changes: Any) -> dict[str, Any]:
    return {
        "notificationUrl": HOOK_URL,
        "modified": "2026-03-01T12:00:00.000000Z",
        "secret": SECRET,
        **changes,
    }


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[StreamClient]:
    resource = CloudflareStream(
        account_id=ACCOUNT, api_token=STREAM_TOKEN, base_url=BASE, breaker_failure_threshold=50
    )
    async with resource.client(timing=clock.timing()) as c:
        yield c


async def test_set_webhook_puts_the_url_and_returns_the_secret(
    api: respx.MockRouter, client: StreamClient, logs: LogCapture
) -> None:
    route = api.put(WEBHOOK_PATH).respond(json=envelope(registration()))

    hook = await client.set_webhook(HOOK_URL)

    assert hook == WebhookRegistration(
        notification_url=HOOK_URL,
        modified=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        secret=SECRET,
    )
    request = route.calls.last.request
    assert request.method == "PUT"
    assert json.loads(request.content) == {"notificationUrl": HOOK_URL}
    assert request.headers["authorization"] == f"Bearer {STREAM_TOKEN}"
    assert client.calls == 1
    assert SECRET not in repr(hook) and SECRET not in str(hook)
    assert HOOK_URL in repr(hook)
    assert SECRET not in logs.text()


async def test_an_unreadable_modified_is_unknown(
    api: respx.MockRouter, client: StreamClient
) -> None:
    api.put(WEBHOOK_PATH).respond(json=envelope(registration(modified="sometime")))
    hook = await client.set_webhook(HOOK_URL)
    assert hook.modified is None
    assert hook.secret == SECRET


@pytest.mark.parametrize(
    "result",
    [
        registration(secret=None),
        registration(secret=""),
        registration(secret=12345),
        registration(notificationUrl=None),
        {"modified": "2026-03-01T12:00:00Z"},
        "",
        [registration()],
    ],
    ids=[
        "no-secret",
        "empty-secret",
        "number-secret",
        "no-url",
        "neither",
        "empty-string",
        "list",
    ],
)
async def test_a_result_without_url_and_secret_is_malformed(
    api: respx.MockRouter, client: StreamClient, result: Any
) -> None:
    route = api.put(WEBHOOK_PATH).respond(json=envelope(result))
    with pytest.raises(RetryableApiError) as caught:
        await client.set_webhook(HOOK_URL)
    assert caught.value.code == "malformed_response"
    assert route.call_count == 3  # retried like any malformed answer


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, PermanentApiError, "http_400"),
        (422, PermanentApiError, "validation_error"),
        (401, FatalApiError, "unauthorized"),
        (403, FatalApiError, "forbidden"),
    ],
)
async def test_refusals_are_classified_and_not_retried(
    api: respx.MockRouter, client: StreamClient, status: int, kind: type[ApiError], code: str
) -> None:
    route = api.put(WEBHOOK_PATH).respond(
        status,
        json={
            "success": False,
            "errors": [{"code": 10002, "message": "bad notificationUrl"}],
            "messages": [],
            "result": None,
        },
    )
    with pytest.raises(ApiError) as caught:
        await client.set_webhook(HOOK_URL)
    assert type(caught.value) is kind
    assert caught.value.code == code
    assert "bad notificationUrl" in caught.value.message
    assert route.call_count == 1


async def test_an_empty_url_is_refused_before_any_call(client: StreamClient) -> None:
    with pytest.raises(ValueError, match="notification_url"):
        await client.set_webhook("")
    assert client.calls == 0


async def test_against_the_emulator_in_process(state_dir: Path) -> None:
    emulator = StreamEmulator(state_dir)
    emulator.update_config({"frozen_clock_s": FROZEN})
    resource = EmulatedCloudflareStream(emulator_state_dir=str(state_dir))
    async with resource.client() as client:
        hook = await client.set_webhook(HOOK_URL)
        with pytest.raises(PermanentApiError) as caught:
            await client.set_webhook("not a url")
    assert caught.value.status == 400
    assert hook.notification_url == HOOK_URL
    assert hook.secret == EMULATOR_WEBHOOK_SECRET
    assert hook.modified is not None
    assert emulator.webhook() == {
        "notification_url": HOOK_URL,
        "account_id": EMULATOR_ACCOUNT_ID,
        "modified": "2026-03-01T12:00:00.000000Z",
    }
    assert hook.modified == datetime.fromtimestamp(FROZEN, UTC)
    assert emulator.calls(endpoint="PUT /accounts/{account_id}/stream/webhook") == 2


async def test_the_emulator_delivers_to_the_registered_url(state_dir: Path) -> None:
    """End to end in-process: register through the client, then one dispatcher pass sends a
    finished video there, signed with the secret the registration returned."""
    emulator = StreamEmulator(state_dir)
    emulator.update_config({"frozen_clock_s": FROZEN})
    async with EmulatedCloudflareStream(emulator_state_dir=str(state_dir)).client() as client:
        hook = await client.set_webhook(HOOK_URL)
    (uid,) = emulator.add_videos([{"final_after_s": 0, "outcome": "ready"}])

    received: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    wall = 1_800_000_000
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as http:
        assert await emulator.dispatch_webhooks(http, wall_clock=lambda: wall) == 1
    (request,) = received
    assert str(request.url) == HOOK_URL
    verify_stream_webhook(
        request.content,
        request.headers[HEADER],
        hook.secret,
        now=datetime.fromtimestamp(wall, UTC),
    )
    assert json.loads(request.content)["uid"] == uid
