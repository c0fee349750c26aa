"""The Stream emulator's answers parse with the official ``cloudflare`` SDK's own models, and the
SDK itself, pointed at the emulator, gets videos, pages and the right exception classes."""

from __future__ import annotations

from typing import Any

import cloudflare
import pytest
from cloudflare import AsyncCloudflare
from cloudflare.types.stream import Video

from alianza_jobs_tests.emulators.conftest import ACCOUNT, TOKEN, Emulator

# Fields the emulator sends that this SDK version does not model (both are in real payloads:
# `step` is documented on Status, `errReasonCode`/`errReasonText` is the legacy spelling).
ALLOWED_STATUS_EXTRAS = {"step", "errReasonCode", "errReasonText"}


def validate(result: dict[str, Any]) -> Video:
    video = Video.model_validate(result)
    # Stainless models accept unknown keys silently; a misspelt field must fail here instead.
    assert not (video.model_extra or {}), f"fields the SDK does not know: {video.model_extra}"
    assert video.status is not None
    assert set(video.status.model_extra or {}) <= ALLOWED_STATUS_EXTRAS
    return video


async def _every_state(emulator: Emulator) -> dict[str, str]:
    specs: dict[str, dict[str, Any]] = {
        "pendingupload": {"initial_state": "pendingupload", "queued_after_s": 50},
        "downloading": {"initial_state": "downloading", "queued_after_s": 50},
        "queued": {"inprogress_after_s": 50, "final_after_s": 100},
        "inprogress": {"inprogress_after_s": 0, "final_after_s": 100},
        "ready": {"final_after_s": 0, "outcome": "ready", "duration": 12.25},
        "error": {"final_after_s": 0, "outcome": "error", "legacy_error_spelling": False},
        "error-legacy": {"final_after_s": 0, "outcome": "error", "legacy_error_spelling": True},
    }
    uids = await emulator.add_videos(*({**spec, "creator": name} for name, spec in specs.items()))
    return dict(zip(specs, uids, strict=True))


async def test_every_state_parses_as_the_sdk_video_type(emulator: Emulator) -> None:
    uids = await _every_state(emulator)
    for name, uid in uids.items():
        body = (await emulator.get_video(uid)).json()
        assert body["success"] is True
        assert body["errors"] == []
        video = validate(body["result"])
        assert video.uid == uid
        assert video.status is not None
        assert video.status.state == name.removesuffix("-legacy")
        assert video.created is not None and video.created.tzinfo is not None
        if name == "ready":
            assert video.duration == 12.25
            assert video.ready_to_stream is True
            assert video.ready_to_stream_at is not None
        if name == "inprogress":
            assert video.status.pct_complete is not None
            assert 0.0 <= float(video.status.pct_complete) < 100.0
        if name in ("queued", "pendingupload", "downloading"):
            assert video.duration == -1
        if name == "error":
            assert video.status.error_reason_code and video.status.error_reason_text
        if name == "error-legacy":
            assert video.status.model_extra is not None
            assert video.status.model_extra["errReasonCode"].startswith("ERR_")


async def test_list_results_parse_as_sdk_videos(emulator: Emulator) -> None:
    await _every_state(emulator)
    body = (await emulator.list_videos(include_counts="true")).json()
    videos = [validate(item) for item in body["result"]]
    assert len(videos) == body["range"] == body["total"] == 7


@pytest.fixture
async def sdk(emulator: Emulator) -> AsyncCloudflare:
    http = emulator.new_client()
    return AsyncCloudflare(
        api_token=TOKEN, base_url=emulator.stream_base, http_client=http, max_retries=0
    )


async def test_sdk_gets_and_lists_videos(emulator: Emulator, sdk: AsyncCloudflare) -> None:
    uids = await _every_state(emulator)
    video = await sdk.stream.get(uids["ready"], account_id=ACCOUNT)
    assert isinstance(video, Video)
    assert video.uid == uids["ready"]
    assert video.status is not None and video.status.state == "ready"

    listed = [v async for v in sdk.stream.list(account_id=ACCOUNT, status="error", asc=True)]
    assert {v.uid for v in listed} == {uids["error"], uids["error-legacy"]}
    assert all(isinstance(v, Video) for v in listed)


async def test_sdk_maps_emulator_errors_to_its_exceptions(
    emulator: Emulator, sdk: AsyncCloudflare
) -> None:
    with pytest.raises(cloudflare.NotFoundError) as not_found:
        await sdk.stream.get("0" * 32, account_id=ACCOUNT)
    assert not_found.value.status_code == 404

    await emulator.configure({"stream": {"require_token": "another-token"}})
    with pytest.raises(cloudflare.AuthenticationError):
        await sdk.stream.get("0" * 32, account_id=ACCOUNT)

    # The 404 above counted against the token's limit; the 401 did not (unauthenticated).
    await emulator.configure(
        {"stream": {"require_token": TOKEN, "rate_limit_requests": 2, "rate_limit_penalty_s": 60}}
    )
    await sdk.stream.list(account_id=ACCOUNT)
    with pytest.raises(cloudflare.RateLimitError) as limited:
        await sdk.stream.list(account_id=ACCOUNT)
    assert limited.value.response.headers["retry-after"] == "60"
