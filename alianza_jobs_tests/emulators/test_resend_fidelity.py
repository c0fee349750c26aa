"""The Resend emulator's answers validate against the ``resend`` SDK's response types, and the SDK
itself, pointed at the emulator, sends, batches and raises its own exception classes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
import resend
from pydantic import TypeAdapter
from resend.exceptions import (
    InvalidApiKeyError,
    RateLimitError,
    ResendError,
    ValidationError,
)
from resend.http_client_async import AsyncHTTPClient

from alianza_jobs_tests.emulators.conftest import RESEND_AUTH, RESEND_KEY, Emulator, email

SEND_RESPONSE = TypeAdapter(resend.Emails.SendResponse)
BATCH_RESPONSE = TypeAdapter(resend.Batch.SendResponse)
EMAIL = TypeAdapter(resend.Email)


async def test_send_answer_is_the_sdk_send_response(emulator: Emulator) -> None:
    body = (await emulator.send(email())).json()
    parsed = SEND_RESPONSE.validate_python(body, strict=True)
    assert parsed["id"] == body["id"]
    assert set(body) == {"id"}


async def test_batch_answers_are_the_sdk_batch_response(emulator: Emulator) -> None:
    strict = (await emulator.send_batch([email(to="a@example.com")])).json()
    assert len(BATCH_RESPONSE.validate_python(strict, strict=True)["data"]) == 1

    permissive = (
        await emulator.send_batch(
            [email(to="a@example.com"), email(to="nope")],
            headers={"x-batch-validation": "permissive"},
        )
    ).json()
    parsed = BATCH_RESPONSE.validate_python(permissive, strict=True)
    assert parsed["errors"] == [{"index": 1, "message": permissive["errors"][0]["message"]}]


async def test_retrieved_email_is_the_sdk_email_type(emulator: Emulator) -> None:
    sent = await emulator.send(
        email(cc=["c@example.com"], bcc=["b@example.com"], reply_to=["r@example.com"])
    )
    fetched = await emulator.client.get(
        f"{emulator.root}/emails/{sent.json()['id']}", headers=RESEND_AUTH
    )
    parsed = EMAIL.validate_python(fetched.json())
    assert parsed["id"] == sent.json()["id"]
    assert parsed["from"] == "Alianza <jobs@alianza.dev>"


@pytest.mark.parametrize(
    ("headers", "message", "status"),
    [
        ({}, email(to="nope"), 422),
        ({}, email() | {"subject": None}, 422),
        ({"Authorization": ""}, email(), 401),
        ({"Authorization": "Bearer nope"}, email(), 403),
    ],
)
async def test_error_bodies_are_ones_the_sdk_maps_to_its_exceptions(
    emulator: Emulator, headers: dict[str, str], message: dict[str, Any], status: int
) -> None:
    response = await emulator.send(message, headers=headers)
    body = response.json()
    assert set(body) == {"statusCode", "name", "message"}
    assert body["statusCode"] == response.status_code == status
    # The SDK picks its exception class from exactly these two values.
    assert body["name"] in resend.exceptions.ERRORS[str(body["statusCode"])]


class _EmulatorHTTPClient(AsyncHTTPClient):
    """The SDK's async HTTP client interface, over our (possibly in-process) transport."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        json: Any = None,
        files: Any = None,
        data: Any = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        response = await self._client.request(method, url, headers=headers, json=json)
        return response.content, response.status_code, response.headers


@pytest.fixture
async def sdk(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    async with emulator.new_client() as client:
        monkeypatch.setattr(resend, "api_key", RESEND_KEY)
        monkeypatch.setattr(resend, "api_url", emulator.root)
        monkeypatch.setattr(resend, "default_async_http_client", _EmulatorHTTPClient(client))
        yield


def _params(to: str = "ana@example.com", subject: str = "Hola") -> resend.Emails.SendParams:
    return {
        "from": "Alianza <jobs@alianza.dev>",
        "to": [to],
        "subject": subject,
        "html": "<p>Hola</p>",
    }


@pytest.mark.usefixtures("sdk")
async def test_sdk_sends_once_per_idempotency_key(emulator: Emulator) -> None:
    options: resend.Emails.SendOptions = {"idempotency_key": "sdk-key-1"}
    first = await resend.Emails.send_async(_params(), options)
    second = await resend.Emails.send_async(_params(), options)
    assert first["id"] == second["id"]
    assert first["http_headers"]["ratelimit-limit"] == "5"
    assert len((await emulator.inbox())["emails"]) == 1

    with pytest.raises(ResendError) as conflict:
        await resend.Emails.send_async(_params(subject="other"), options)
    assert conflict.value.code == 409
    assert conflict.value.error_type == "invalid_idempotent_request"


@pytest.mark.usefixtures("sdk")
async def test_sdk_permissive_batch(emulator: Emulator) -> None:
    result = await resend.Batch.send_async(
        [_params("a@example.com"), _params("broken")], {"batch_validation": "permissive"}
    )
    assert len(result["data"]) == 1
    assert result["errors"][0]["index"] == 1
    with pytest.raises(ValidationError):
        await resend.Batch.send_async([_params("a@example.com"), _params("broken")])
    assert len((await emulator.inbox())["emails"]) == 1


@pytest.mark.usefixtures("sdk")
async def test_sdk_raises_its_own_exceptions_for_emulator_errors(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await emulator.configure({"resend": {"rate_limit_requests": 1}})
    await resend.Emails.send_async(_params())
    with pytest.raises(RateLimitError) as limited:
        await resend.Emails.send_async(_params())
    assert limited.value.headers["retry-after"] == "1"

    await emulator.advance(1.01)
    with pytest.raises(ValidationError):
        await resend.Emails.send_async(_params("not an address"))

    monkeypatch.setattr(resend, "api_key", "not-a-resend-key")
    with pytest.raises(InvalidApiKeyError):
        await resend.Emails.send_async(_params())
