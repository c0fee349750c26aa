"""The clients against the project's emulators in-process (wire formats agree end to end).

The full 3,000-call rate-limit run against the emulator comes with the integration work; this is a
quick check that both halves speak the same protocol.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alianza_jobs.resources.http import PermanentApiError
from alianza_jobs.resources.resend import OutgoingEmail, ResendEmail, idempotency_key_for
from alianza_jobs.resources.stream import STREAM_STATES, CloudflareStream

emulators = pytest.importorskip("alianza_jobs.emulators")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "emulators"


async def test_stream_list_and_get(state_dir: Path) -> None:
    uids = emulators.StreamEmulator(state_dir).seed(25, seed=3, spacing_s=60.0)
    resource = CloudflareStream(
        account_id=emulators.EMULATOR_ACCOUNT_ID,
        api_token="emulator-token",
        emulator_state_dir=str(state_dir),
    )
    async with resource.client() as client:
        listed = [v async for v in client.list_videos(page_size=10)]
        assert sorted(v.uid for v in listed) == sorted(uids)
        assert all(v.parse_error is None for v in listed), [v.parse_error for v in listed]
        assert all(v.state in STREAM_STATES for v in listed)
        created = [v.created for v in listed]
        assert created == sorted(c for c in created if c is not None)

        one = await client.get_video(uids[0])
        assert one.uid == uids[0]
        with pytest.raises(PermanentApiError) as caught:
            await client.get_video("0" * 32)
        assert caught.value.code == "not_found"
        # 3 pages (10, 10, 5 + overlap) + 2 gets.
        assert client.calls <= 6


async def test_resend_batch_permissive_and_idempotent(state_dir: Path) -> None:
    resource = ResendEmail(api_key="re_emulator_local", emulator_state_dir=str(state_dir))
    emails = [
        OutgoingEmail("Alianza <jobs@alianza.test>", ["a@example.com"], "One", "<p>1</p>", None),
        OutgoingEmail("Alianza <jobs@alianza.test>", ["not an address"], "Two", "<p>2</p>", None),
        OutgoingEmail("Alianza <jobs@alianza.test>", ["c@example.com"], "Three", None, "3"),
    ]
    key = idempotency_key_for(emails)
    async with resource.client() as client:
        first = await client.send_batch(emails, idempotency_key=key)
        again = await client.send_batch(emails, idempotency_key=key)
        single = await client.send(emails[0])

    assert [r.ok for r in first] == [True, False, True]
    assert first[1].error is not None
    assert [r.id for r in again] == [r.id for r in first]
    assert single
    inbox = emulators.ResendEmulator(state_dir).inbox()
    # The replayed batch sent nothing new; the single send has its own key.
    assert sorted(e.subject for e in inbox) == ["One", "One", "Three"]
