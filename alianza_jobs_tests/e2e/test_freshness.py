"""A job that silently stops makes its table stale: exactly one alert, then exactly one notice once
the table is fresh again, from the real daemon's freshness evaluations (which launch no run).

The suite's deployment (conftest.py) runs sync_stream_catalog every minute with its backlog probe
on: with nothing due, each tick records stream_videos as current, which keeps it fresh within its
2-minute window. Turning the schedule off, as an operator might by mistake, stops the updates.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from dagster import AssetKey
from dagster._core.definitions.freshness import FreshnessState

from alianza_jobs_tests.e2e.conftest import FRESHNESS_WINDOW_S
from alianza_jobs_tests.e2e.harness import AlertReceiver, Deployment, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TABLE = "stream_videos"
JOB = "sync_stream_catalog"
SCHEDULE = f"{JOB}_schedule"
SENSOR = "alert_on_stale_tables"


def _state(deployment: Deployment) -> FreshnessState | None:
    key = AssetKey(TABLE)
    record = deployment.instance.get_freshness_state_records([key]).get(key)
    return record.freshness_state if record else None


def _alerts(receiver: AlertReceiver, kind: str, since: float) -> list[dict[str, Any]]:
    return [payload for at, payload in receiver.alerts(kind=kind, table=TABLE) if at >= since]


def _finished_ticks(deployment: Deployment, after: float) -> int:
    return sum(
        1
        for tick in deployment.ticks(SENSOR)
        if tick["timestamp"] > after and tick["status"] != "STARTED"
    )


# The freshness daemon evaluates every 5 s here: a sensor tick that starts this long after the
# alert comes after two more evaluations of the stale table.
TWO_EVALUATIONS_S = 10


def test_a_table_whose_schedule_stops_alerts_once_then_says_it_is_fresh_again(
    deployment: Deployment, alert_receiver: AlertReceiver
) -> None:
    began = time.monotonic()
    wait_for(
        f"{TABLE} to be fresh (its nothing-due ticks keep it so)",
        lambda: _state(deployment) is FreshnessState.PASS,
        timeout=300,
        interval=2,
    )
    fresh_at = time.monotonic() - began
    stopped_at = time.time()
    with deployment.schedule_stopped(SCHEDULE):
        # The last update ages past the window; the daemon sees it within 5 s, the sensor
        # within 30 s after that. Generous: a loaded machine is slow at every step.
        [stale] = wait_for(
            f"a stale alert for {TABLE}",
            lambda: _alerts(alert_receiver, "stale", stopped_at),
            timeout=FRESHNESS_WINDOW_S + 300,
            interval=2,
        )
        alerted = time.time()
        stale_after = time.monotonic() - began
        assert _state(deployment) is FreshnessState.FAIL
        # Still stale, evaluated again and again: the sensor's next tick says nothing more.
        wait_for(
            f"a tick of {SENSOR} after two more evaluations",
            lambda: _finished_ticks(deployment, alerted + TWO_EVALUATIONS_S) >= 1,
            timeout=240,
            interval=2,
        )
        assert len(_alerts(alert_receiver, "stale", stopped_at)) == 1
        assert _alerts(alert_receiver, "fresh", stopped_at) == []

    # On again: its next tick finds nothing due and records the table as current.
    [fresh] = wait_for(
        f"a notice that {TABLE} is fresh again",
        lambda: _alerts(alert_receiver, "fresh", stopped_at),
        timeout=300,
        interval=2,
    )
    assert len(_alerts(alert_receiver, "stale", stopped_at)) == 1

    assert stale["alianza"] == {"kind": "stale", "table": TABLE, "job": JOB}
    lines = stale["text"].splitlines()
    assert lines[0].startswith(f"[alianza-jobs] {TABLE} is stale (last updated 20")
    assert f"Maintained by: {JOB}" in lines
    assert f"Link: {deployment.url}/assets/{TABLE}" in lines
    # A nothing-due tick, most likely; a run of the job if one had work just before the stop.
    assert any(
        line.startswith("Last update: 20")
        and ("(schedule tick: nothing due)" in line or "(run " in line)
        for line in lines
    ), lines
    assert (
        f"Window: stale 2 min after its last update "
        f"(ALIANZA_FRESHNESS_STREAM_VIDEOS_SECONDS={FRESHNESS_WINDOW_S})"
    ) in lines
    assert fresh["alianza"] == {"kind": "fresh", "table": TABLE, "job": JOB}
    assert fresh["text"].startswith(f"[alianza-jobs] {TABLE} is fresh again")
    print(
        f"\ne2e: {TABLE} fresh after {fresh_at:.0f} s, stale alert at {stale_after:.0f} s, "
        f"fresh again at {time.monotonic() - began:.0f} s"
    )
