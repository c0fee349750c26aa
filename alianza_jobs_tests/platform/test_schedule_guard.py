"""The overlap guard: a tick is skipped, naming the blocking run, while the job has one active."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    build_schedule_context,
)
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from alianza_jobs.platform.tags import TAG_CRON, TAG_SCHEDULED_TIME
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.platform import defs

TICK = datetime(2026, 11, 28, 12, 7, tzinfo=UTC)


def _schedule():
    schedule = defs.FLAKY.schedule(defs.flaky_job, load_settings({}))
    assert schedule is not None
    return schedule


def _run_with_status(instance: DagsterInstance, status: DagsterRunStatus) -> DagsterRun:
    # A queued run must say which code location to load it from, as the webserver's would.
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                LoadableTargetOrigin(module_name="alianza_jobs_tests.platform.defs")
            ),
            repository_name="__repository__",
        ),
        job_name="flaky",
    )
    return instance.create_run_for_job(
        job_def=defs.flaky_job, status=status, remote_job_origin=origin
    )


def _evaluate(instance: DagsterInstance):
    context = build_schedule_context(instance=instance, scheduled_execution_time=TICK)
    return _schedule().evaluate_tick(context)


def test_tick_launches_a_run_tagged_with_cron_and_scheduled_time() -> None:
    result = _evaluate(DagsterInstance.get())
    assert result.skip_message is None
    [request] = result.run_requests or []
    assert request.tags[TAG_SCHEDULED_TIME] == TICK.isoformat()
    assert request.tags[TAG_CRON] == "*/7 * * * *"


@pytest.mark.parametrize(
    "status",
    [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ],
)
def test_tick_is_skipped_while_a_run_is_active(status: DagsterRunStatus) -> None:
    instance = DagsterInstance.get()
    blocking = _run_with_status(instance, status)
    result = _evaluate(instance)
    assert not result.run_requests
    assert result.skip_message is not None
    assert blocking.run_id in result.skip_message
    assert status.value.lower() in result.skip_message


def test_finished_runs_and_other_jobs_do_not_block() -> None:
    instance = DagsterInstance.get()
    instance.create_run_for_job(job_def=defs.flaky_job, status=DagsterRunStatus.SUCCESS)
    instance.create_run_for_job(job_def=defs.flaky_job, status=DagsterRunStatus.FAILURE)
    instance.create_run_for_job(job_def=defs.counts_job, status=DagsterRunStatus.STARTED)
    result = _evaluate(instance)
    assert result.skip_message is None
    assert len(result.run_requests or []) == 1
