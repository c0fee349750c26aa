"""The resources inside Dagster: configured with EnvVar, used from an async op, metadata out."""

from __future__ import annotations

from typing import Any

import dagster as dg
import httpx
import pytest
import respx

from alianza_jobs.clients.http import RetryableApiError
from alianza_jobs.resources import CloudflareStream, ResendEmail
from alianza_jobs_tests.clients.conftest import RESEND_KEY, STREAM_TOKEN, FakeClock

BASE = "https://cf.test/client/v4"


@dg.op
async def check_one_video(stream: CloudflareStream) -> dg.Output[str]:
    async with stream.client() as client:
        video = await client.get_video("vid1")
        metadata: dict[str, Any] = {
            "api_calls": client.calls,
            "breaker_cloudflare_stream": client.breaker_snapshot(),
        }
    return dg.Output(video.state, metadata=metadata)


@dg.job
def check_job() -> None:
    check_one_video()


def test_stream_resource_in_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFLARE_STREAM_API_TOKEN", STREAM_TOKEN)
    resource = CloudflareStream(
        account_id="acc",
        api_token=dg.EnvVar("CLOUDFLARE_STREAM_API_TOKEN"),
        base_url=BASE,
    )
    body = {
        "success": True,
        "errors": [],
        "messages": [],
        "result": {"uid": "vid1", "status": {"state": "ready"}, "duration": 4},
    }
    with respx.mock(base_url=BASE) as router:
        route = router.get("/accounts/acc/stream/vid1").respond(json=body)
        result = check_job.execute_in_process(resources={"stream": resource})

    assert result.success
    assert result.output_for_node("check_one_video") == "ready"
    assert route.calls.last.request.headers["authorization"] == f"Bearer {STREAM_TOKEN}"
    events = result.events_for_node("check_one_video")
    outputs = [e for e in events if e.event_type_value == "STEP_OUTPUT"]
    metadata = outputs[0].step_output_data.metadata
    assert metadata["api_calls"].value == 1
    breaker = metadata["breaker_cloudflare_stream"].value
    assert isinstance(breaker, dict)
    assert breaker["state"] == "closed"
    # Dagster records the variable's name, never the token, in the run's config.
    assert STREAM_TOKEN not in repr(result.dagster_run.run_config)


def test_resource_defaults() -> None:
    stream = CloudflareStream(account_id="a", api_token="t")
    assert (stream.connect_timeout_s, stream.read_timeout_s) == (5.0, 20.0)
    assert (stream.rate_limit_requests, stream.rate_limit_window_s) == (1200, 300.0)
    assert stream.base_url == "https://api.cloudflare.com/client/v4"
    resend = ResendEmail(api_key=RESEND_KEY)
    assert resend.base_url == "https://api.resend.com"
    assert resend.max_attempts == 3


async def test_missing_route_is_a_network_error_not_a_crash() -> None:
    # A transport-level failure of any kind surfaces as our error type, never as raw httpx.
    with respx.mock(base_url=BASE) as router:
        router.get("/accounts/a/stream/x").mock(side_effect=httpx.RemoteProtocolError("reset"))
        async with CloudflareStream(account_id="a", api_token="t", base_url=BASE).client(
            timing=FakeClock().timing()
        ) as c:
            with pytest.raises(RetryableApiError) as caught:
                await c.get_video("x")
    assert caught.value.code == "network_error"
    assert "RemoteProtocolError" in str(caught.value)
