"""The clients against the project's emulators: in-process and over a real socket, same tests.

``alianza-jobs emulate`` keeps its state in the directory it is given, so the tests set up videos and
read the inbox through the emulators' Python API on that directory in both modes; only the path the
requests take differs (``httpx.ASGITransport`` vs. a loopback TCP connection through uvicorn).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alianza_jobs.clients.http import PermanentApiError
from alianza_jobs.clients.resend import OutgoingEmail, idempotency_key_for
from alianza_jobs.clients.stream import STREAM_STATES
from alianza_jobs.emulators import EMULATOR_ACCOUNT_ID, ResendEmulator, StreamEmulator
from alianza_jobs.resources import (
    CloudflareStream,
    EmulatedCloudflareStream,
    EmulatedResendEmail,
    ResendEmail,
)
from alianza_jobs_tests.emulators.conftest import start_emulate, stop

TOKEN = "emulator-token"
RESEND_KEY = "re_emulator_local"


@dataclass
class Target:
    mode: str
    state_dir: Path
    root: str | None  # None: in-process

    def stream(self, **overrides: object) -> CloudflareStream:
        if self.root is None:
            return EmulatedCloudflareStream(
                account_id=EMULATOR_ACCOUNT_ID,
                api_token=TOKEN,
                emulator_state_dir=str(self.state_dir),
                **overrides,
            )
        return CloudflareStream(
            account_id=EMULATOR_ACCOUNT_ID,
            api_token=TOKEN,
            base_url=f"{self.root}/client/v4",
            **overrides,
        )

    def resend(self) -> ResendEmail:
        if self.root is None:
            return EmulatedResendEmail(api_key=RESEND_KEY, emulator_state_dir=str(self.state_dir))
        return ResendEmail(api_key=RESEND_KEY, base_url=self.root)


@pytest.fixture(params=["in-process", "socket"])
def target(request: pytest.FixtureRequest, state_dir: Path, tmp_path: Path) -> Iterator[Target]:
    state_dir.mkdir(parents=True, exist_ok=True)
    if request.param == "in-process":
        yield Target("in-process", state_dir, None)
        return
    home = tmp_path / "emulate_home"
    home.mkdir()
    server = start_emulate(state_dir, env={"DAGSTER_HOME": str(home)})
    try:
        yield Target("socket", state_dir, server.root)
    finally:
        stop(server)


async def test_stream_list_get_find_and_not_found(target: Target) -> None:
    uids = StreamEmulator(target.state_dir).seed(25, seed=3, spacing_s=60.0)
    async with target.stream().client() as client:
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

        StreamEmulator(target.state_dir).delete(uids[1])
        found = await client.find_videos([uids[0], uids[1], "f" * 32])
        assert [v.uid for v in found] == [uids[0]]
        # 3 pages (10, 10, 5 + overlap), 2 gets, 1 lookup.
        assert client.calls <= 7


async def test_resend_batch_permissive_and_idempotent(target: Target) -> None:
    emails = [
        OutgoingEmail("Alianza <jobs@alianza.test>", ["a@example.com"], "One", "<p>1</p>", None),
        OutgoingEmail("Alianza <jobs@alianza.test>", ["not an address"], "Two", "<p>2</p>", None),
        OutgoingEmail("Alianza <jobs@alianza.test>", ["c@example.com"], "Three", None, "3"),
    ]
    key = idempotency_key_for(emails)
    async with target.resend().client() as client:
        first = await client.send_batch(emails, idempotency_key=key)
        again = await client.send_batch(emails, idempotency_key=key)
        single = await client.send(emails[0])

    assert [r.ok for r in first] == [True, False, True]
    assert first[1].error is not None
    assert [r.id for r in again] == [r.id for r in first]
    assert single
    inbox = ResendEmulator(target.state_dir).inbox()
    # The replayed batch sent nothing new; the single send has its own key.
    assert sorted(e.subject for e in inbox) == ["One", "One", "Three"]


async def test_three_thousand_calls_under_cloudflares_limit_get_no_429(state_dir: Path) -> None:
    """Cloudflare's limit shape (1,200 requests per window, a penalty beyond it), with the window
    scaled from 5 minutes to 3 s so 3,000 calls take seconds: the client's limiter keeps under it."""
    window_s = 3.0
    emulator = StreamEmulator(state_dir)
    [uid] = emulator.seed(1, seed=1)
    emulator.configure(
        rate_limit_requests=1200, rate_limit_window_s=window_s, rate_limit_penalty_s=300.0
    )
    target = Target("in-process", state_dir, None)
    async with target.stream(
        rate_limit_requests=1200, rate_limit_window_s=window_s
    ).client() as client:
        import asyncio

        async def call() -> None:
            await client.get_video(uid)

        await asyncio.gather(*(call() for _ in range(3000)))
        assert client.calls == 3000
    assert emulator.calls(service="stream", status=429) == 0
    assert emulator.calls(service="stream", status=200) == 3000
