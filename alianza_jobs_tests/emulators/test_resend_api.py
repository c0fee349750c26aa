"""The Resend emulator over HTTP: sends, validation, batches, idempotency and the inbox."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from alianza_jobs_tests.emulators.conftest import RESEND_KEY, Emulator, email


async def test_single_send_is_delivered_to_the_inbox(emulator: Emulator) -> None:
    message = email(
        subject="Bienvenida",
        cc="copy@example.com",
        reply_to=["Soporte <support@alianza.dev>"],
        headers={"X-Entity-Ref-ID": "42"},
        tags=[{"name": "category", "value": "welcome"}],
    )
    response = await emulator.send(message)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    email_id = response.json()["id"]

    inbox = await emulator.inbox()
    (delivered,) = inbox["emails"]
    assert delivered["id"] == email_id
    assert delivered["to"] == ["ana@example.com"]
    assert delivered["cc"] == ["copy@example.com"]
    assert delivered["subject"] == "Bienvenida"
    assert delivered["headers"] == {"X-Entity-Ref-ID": "42"}
    assert delivered["idempotency_key"] is None
    assert delivered["times_delivered"] == 1

    fetched = await emulator.client.get(
        f"{emulator.root}/emails/{email_id}", headers={"Authorization": f"Bearer {RESEND_KEY}"}
    )
    assert fetched.status_code == 200
    assert fetched.json()["subject"] == "Bienvenida"
    assert fetched.json()["last_event"] == "delivered"


@pytest.mark.parametrize(
    ("change", "status", "name", "fragment"),
    [
        ({"to": ["not-an-address"]}, 422, "validation_error", "`to`"),
        ({"from": "Alianza jobs@alianza.dev"}, 422, "validation_error", "`from`"),
        ({"to": None}, 422, "missing_required_field", "`to`"),
        ({"subject": None}, 422, "missing_required_field", "`subject`"),
        ({"html": None, "text": None}, 422, "missing_required_field", "`html`"),
        ({"subject": "Hola\r\nBcc: everyone@example.com"}, 422, "validation_error", "line breaks"),
        (
            {"headers": {"X-Evil": "a\r\nBcc: x@example.com"}},
            422,
            "validation_error",
            "line breaks",
        ),
        ({"headers": {"Bad Header": "x"}}, 422, "validation_error", "header"),
        ({"to": [f"u{i}@example.com" for i in range(51)]}, 422, "validation_error", "50"),
        ({"tags": [{"name": "has space", "value": "x"}]}, 422, "validation_error", "tags"),
    ],
)
async def test_invalid_emails_are_refused_and_not_delivered(
    emulator: Emulator, change: dict[str, Any], status: int, name: str, fragment: str
) -> None:
    response = await emulator.send(email() | change)
    assert response.status_code == status
    body = response.json()
    assert body == {"statusCode": status, "name": name, "message": body["message"]}
    assert fragment in body["message"]
    assert (await emulator.inbox())["emails"] == []


async def test_fifty_recipients_are_allowed(emulator: Emulator) -> None:
    response = await emulator.send(email() | {"to": [f"u{i}@example.com" for i in range(50)]})
    assert response.status_code == 200


async def test_unparseable_body_is_a_400(emulator: Emulator) -> None:
    response = await emulator.client.post(
        f"{emulator.root}/emails",
        content=b'{"from": ',
        headers={"Authorization": f"Bearer {RESEND_KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["name"] == "validation_error"


async def test_auth_missing_invalid_and_required_keys(emulator: Emulator) -> None:
    missing = await emulator.client.post(f"{emulator.root}/emails", json=email())
    assert missing.status_code == 401
    assert missing.json()["name"] == "missing_api_key"
    invalid = await emulator.send(email(), headers={"Authorization": "Bearer sk_live_nope"})
    assert invalid.status_code == 403
    assert invalid.json()["name"] == "invalid_api_key"

    await emulator.configure({"resend": {"require_key": "re_the_real_one"}})
    assert (await emulator.send(email())).status_code == 403
    ok = await emulator.send(email(), headers={"Authorization": "Bearer re_the_real_one"})
    assert ok.status_code == 200
    await emulator.configure({"resend": {"revoke_key": "re_the_real_one"}})
    revoked = await emulator.send(email(), headers={"Authorization": "Bearer re_the_real_one"})
    assert revoked.status_code == 403
    assert len((await emulator.inbox())["emails"]) == 1


async def test_strict_batch_refuses_everything_when_one_is_invalid(emulator: Emulator) -> None:
    batch = [email(to="a@example.com"), email(to="broken"), email(to="c@example.com")]
    response = await emulator.send_batch(batch)
    assert response.status_code == 422
    assert response.json()["name"] == "validation_error"
    assert "emails[1]" in response.json()["message"]
    assert (await emulator.inbox())["emails"] == []

    explicit = await emulator.send_batch(batch, headers={"x-batch-validation": "strict"})
    assert explicit.status_code == 422


async def test_permissive_batch_sends_the_valid_ones_and_reports_the_rest(
    emulator: Emulator,
) -> None:
    batch = [
        email(to="a@example.com"),
        email(to="broken"),
        email(to="c@example.com"),
        email(to="d@example.com", subject="Line\nbreak"),
    ]
    response = await emulator.send_batch(batch, headers={"x-batch-validation": "permissive"})
    assert response.status_code == 200
    body = response.json()
    assert len(body["data"]) == 2
    assert [e["index"] for e in body["errors"]] == [1, 3]
    assert all(e["message"] for e in body["errors"])
    inbox = (await emulator.inbox())["emails"]
    assert [e["to"] for e in inbox] == [["a@example.com"], ["c@example.com"]]
    assert [e["id"] for e in inbox] == [d["id"] for d in body["data"]]
    assert [e["batch_index"] for e in inbox] == [0, 2]


async def test_strict_batch_success_has_no_errors_key(emulator: Emulator) -> None:
    response = await emulator.send_batch([email(to="a@example.com"), email(to="b@example.com")])
    assert response.status_code == 200
    assert set(response.json()) == {"data"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "at least 1"),
        ({"from": "a@example.com"}, "array"),
        ([email(to=f"u{i}@example.com") for i in range(101)], "100"),
    ],
)
async def test_batch_shape_errors_even_in_permissive_mode(
    emulator: Emulator, body: Any, fragment: str
) -> None:
    response = await emulator.send_batch(body, headers={"x-batch-validation": "permissive"})
    assert response.status_code == 422
    assert fragment in response.json()["message"]
    assert (await emulator.inbox())["emails"] == []


async def test_attachments_are_not_allowed_in_batches(emulator: Emulator) -> None:
    item = email(attachments=[{"filename": "a.txt", "content": "aGk="}])
    response = await emulator.send_batch([item], headers={"x-batch-validation": "permissive"})
    assert response.json()["errors"][0]["index"] == 0


async def test_same_key_and_body_replays_the_first_answer_without_sending_again(
    emulator: Emulator,
) -> None:
    key = {"Idempotency-Key": "welcome-user/42"}
    first = await emulator.send(email(), headers=key)
    again = await emulator.send(email(), headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()

    batch_key = {"Idempotency-Key": "batch-1"}
    batch = [email(to="x@example.com"), email(to="y@example.com")]
    b1 = await emulator.send_batch(batch, headers=batch_key)
    b2 = await emulator.send_batch(batch, headers=batch_key)
    assert b1.json() == b2.json()

    inbox = await emulator.inbox()
    assert len(inbox["emails"]) == 3
    assert inbox["counts_by_idempotency_key"] == {"welcome-user/42": 1, "batch-1": 2}
    entries = (await emulator.admin("GET", "/resend/idempotency/welcome-user/42"))["entries"]
    assert entries[0]["state"] == "done"
    assert entries[0]["replays"] == 1


async def test_same_key_with_another_body_is_409_invalid_idempotent_request(
    emulator: Emulator,
) -> None:
    key = {"Idempotency-Key": "k-1"}
    assert (await emulator.send(email(subject="one"), headers=key)).status_code == 200
    other = await emulator.send(email(subject="two"), headers=key)
    assert other.status_code == 409
    assert other.json()["name"] == "invalid_idempotent_request"
    # Same key on the other endpoint is another request too.
    on_batch = await emulator.send_batch([email(subject="one")], headers=key)
    assert on_batch.status_code == 409
    assert len((await emulator.inbox())["emails"]) == 1


async def test_same_key_while_in_flight_is_409_concurrent(emulator: Emulator) -> None:
    # The first request is held in flight until the second has been answered.
    await emulator.configure({"resend": {"hold_requests": [1]}})
    key = {"Idempotency-Key": "slow-one"}
    first = asyncio.create_task(emulator.send(email(), headers=key))
    deadline = time.monotonic() + 30
    while not (await emulator.admin("GET", "/resend/idempotency/slow-one"))["entries"]:
        assert time.monotonic() < deadline, "the first request never went in flight"
        await asyncio.sleep(0.01)
    second = await emulator.send(email(), headers=key)
    assert second.status_code == 409
    assert second.json()["name"] == "concurrent_idempotent_requests"
    assert not first.done()
    await emulator.configure({"resend": {"hold_requests": []}})
    assert (await first).status_code == 200
    replay = await emulator.send(email(), headers=key)
    assert replay.status_code == 200
    assert replay.json() == (await first).json()
    assert len((await emulator.inbox())["emails"]) == 1


async def test_idempotency_key_length_is_checked(emulator: Emulator) -> None:
    response = await emulator.send(email(), headers={"Idempotency-Key": "k" * 257})
    assert response.status_code == 400
    assert response.json()["name"] == "invalid_idempotency_key"
    ok = await emulator.send(email(), headers={"Idempotency-Key": "k" * 256})
    assert ok.status_code == 200


async def test_a_refused_request_does_not_burn_its_key(emulator: Emulator) -> None:
    key = {"Idempotency-Key": "fix-and-retry"}
    assert (await emulator.send(email(to="broken"), headers=key)).status_code == 422
    # The corrected request is a different payload, but the key was never used to send.
    assert (await emulator.send(email(), headers=key)).status_code == 200
    assert len((await emulator.inbox())["emails"]) == 1


async def test_idempotency_keys_expire_after_24_hours(emulator: Emulator) -> None:
    key = {"Idempotency-Key": "daily-digest"}
    first = await emulator.send(email(), headers=key)
    await emulator.advance(24 * 3600 + 1)
    later = await emulator.send(email(), headers=key)
    assert later.status_code == 200
    assert later.json()["id"] != first.json()["id"]
    assert len((await emulator.inbox())["emails"]) == 2


async def test_inbox_counts_duplicates_sent_without_a_key(emulator: Emulator) -> None:
    await emulator.send(email(subject="Twice"))
    await emulator.send(email(subject="Twice"))
    await emulator.send(email(subject="Once"))
    inbox = await emulator.inbox()
    times = {(e["subject"], e["times_delivered"]) for e in inbox["emails"]}
    assert times == {("Twice", 2), ("Once", 1)}
    assert sorted(inbox["counts_by_message"].values()) == [1, 2]


async def test_lost_answer_then_retry_with_the_same_key_sends_once(emulator: Emulator) -> None:
    """The reason idempotency keys exist: the mail went out, the answer was lost (a 5xx after
    processing), the client retries with the same key and gets the first answer."""
    await emulator.configure(
        {
            "resend": {
                "error_rate": 1.0,
                "error_statuses": [500],
                "fault_after_processing_share": 1.0,
            }
        }
    )
    key = {"Idempotency-Key": "order-7-confirmation"}
    lost = await emulator.send(email(), headers=key)
    assert lost.status_code == 500
    assert lost.json()["name"] == "application_error"
    assert len((await emulator.inbox())["emails"]) == 1

    await emulator.configure({"resend": {"error_rate": 0.0}})
    retry = await emulator.send(email(), headers=key)
    assert retry.status_code == 200
    inbox = await emulator.inbox()
    assert [e["id"] for e in inbox["emails"]] == [retry.json()["id"]]


async def test_unknown_endpoint_is_a_resend_404(emulator: Emulator) -> None:
    response = await emulator.client.get(f"{emulator.root}/domains")
    assert response.status_code == 404
    assert response.json()["name"] == "not_found"
