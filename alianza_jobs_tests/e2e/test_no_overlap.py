"""Two ticks of one job while its run is slow: the second tick is skipped, a second launch waits.

``slow_tick`` (``* * * * *``, from the suite's code location) holds its run open until the test
releases it, so the next minute's tick falls while it runs. Its op also fails outright if another
run of it is inside at the same time (an exclusive marker file), so an overlap cannot go unseen.
"""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from dagster import DagsterRunStatus

from alianza_jobs_tests.e2e.harness import Deployment, wait_for
from alianza_jobs_tests.e2e.location import EVENTS_FILE, RELEASE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

JOB = "slow_tick"
SCHEDULE = f"{JOB}_schedule"


def _held_run(deployment: Deployment) -> str | None:
    """The scheduled run of slow_tick that is inside its op now."""
    for record in deployment.run_records(JOB):
        run = record.dagster_run
        if run.status is DagsterRunStatus.STARTED and run.tags.get("dagster/schedule_name"):
            return run.run_id
    return None


def test_a_tick_while_the_job_runs_is_skipped_and_a_second_run_waits(
    deployment: Deployment,
) -> None:
    first = wait_for(
        "slow_tick's scheduled run to start", lambda: _held_run(deployment), timeout=150
    )
    first_started = deployment.run_record(first).start_time
    assert first_started is not None
    second = deployment.launch(JOB, tags={"e2e/launched_by": "graphql"})

    def skipped_tick() -> dict[str, object] | None:
        for tick in deployment.ticks(SCHEDULE):
            if tick["timestamp"] > first_started and tick["status"] == "SKIPPED":
                return tick
        return None

    tick = wait_for(
        "a tick of slow_tick_schedule while its run is held", skipped_tick, timeout=130, interval=2
    )
    # The guard names the in-progress run it found: the held one, or the launch queued behind it.
    assert any(run_id in str(tick["skip_reason"]) for run_id in (first, second)), tick
    assert not tick["run_ids"]
    # The launch through GraphQL was not refused: it waits in the queue (tag alianza/job = 1).
    assert deployment.graphql.get_run_status(first) is DagsterRunStatus.STARTED
    assert deployment.graphql.get_run_status(second) is DagsterRunStatus.QUEUED

    (deployment.e2e_state_dir / RELEASE_FILE).touch()
    assert deployment.wait_for_run(first, timeout=60) is DagsterRunStatus.SUCCESS
    assert deployment.wait_for_run(second, timeout=120) is DagsterRunStatus.SUCCESS

    one, two = deployment.run_record(first), deployment.run_record(second)
    assert one.end_time is not None and two.start_time is not None
    assert two.start_time >= one.end_time
    # Over the whole suite: every run of slow_tick, one after another. None failed once started
    # (a launch cut short by the daemon crash tests never starts; run monitoring fails it).
    runs = deployment.run_records(JOB)
    failed = [r for r in runs if r.dagster_run.status is DagsterRunStatus.FAILURE]
    assert all(r.start_time is None for r in failed), failed
    finished = sorted(
        (r for r in runs if r.dagster_run.is_finished), key=lambda r: r.start_time or 0
    )
    for earlier, later in itertools.pairwise(finished):
        assert earlier.end_time is not None and later.start_time is not None
        assert later.start_time >= earlier.end_time, (
            earlier.dagster_run.run_id,
            later.dagster_run.run_id,
        )
    events = (deployment.e2e_state_dir / EVENTS_FILE).read_text().splitlines()
    assert not [e for e in events if " overlap " in e], events
    print(
        f"\ne2e: slow_tick held {datetime.fromtimestamp(first_started):%H:%M:%S}-"
        f"{datetime.fromtimestamp(one.end_time):%H:%M:%S}; tick {tick['status']}: "
        f"{tick['skip_reason']}"
    )
