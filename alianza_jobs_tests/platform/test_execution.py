"""Enforced timeouts, retries and metadata, on real Dagster runs stored in a real instance."""

from __future__ import annotations

from dagster import (
    DagsterEventType,
    DagsterInstance,
    build_op_context,
)

from alianza_jobs.platform.results import job_result
from alianza_jobs.platform.task import TaskReport
from alianza_jobs_tests.platform import defs


def _events(instance: DagsterInstance, run_id: str, event_type: DagsterEventType) -> list:
    return list(instance.get_records_for_run(run_id, of_type=event_type).records)


def test_hanging_op_is_cancelled_at_its_timeout_and_retried_per_policy() -> None:
    instance = DagsterInstance.get()
    result = defs.hangs_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success

    starts = _events(instance, result.run_id, DagsterEventType.STEP_START) + _events(
        instance, result.run_id, DagsterEventType.STEP_RESTARTED
    )
    retries = _events(instance, result.run_id, DagsterEventType.STEP_UP_FOR_RETRY)
    failures = _events(instance, result.run_id, DagsterEventType.STEP_FAILURE)
    # 1 try + 2 retries, each visible in the run's events.
    assert len(starts) == 3
    assert len(retries) == 2
    assert len(failures) == 1

    ends = sorted(r.event_log_entry.timestamp for r in retries + failures)
    begins = sorted(r.event_log_entry.timestamp for r in starts)
    for began, ended in zip(begins, ends, strict=True):
        # Timeout 0.5 s on an op that would hang for an hour: each attempt lasts at least the
        # timeout and ends soon after it, within a margin (10 s) that a loaded machine keeps too.
        assert 0.5 <= ended - began < 0.5 + 10.0

    for record in retries + failures:
        error = record.event_log_entry.dagster_event.event_specific_data.error
        while error.cause is not None:
            error = error.cause
        assert "hangs exceeded its 0.5 s timeout" in error.message

    outcome = job_result(instance, result.run_id)
    assert outcome.error == "TaskTimeoutError: hangs exceeded its 0.5 s timeout"
    assert outcome.retry_count == 2

    # The cancelled attempts gave back what they had claimed.
    claims = defs.lines("claims")
    assert claims.count("claimed attempt-0") == claims.count("released attempt-0") == 1
    assert sum(line.startswith("claimed") for line in claims) == 3
    assert sum(line.startswith("released") for line in claims) == 3


def test_op_failing_twice_then_succeeding_reports_two_retries() -> None:
    instance = DagsterInstance.get()
    result = defs.flaky_job.execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    outcome = job_result(instance, result.run_id)
    assert outcome.success
    assert outcome.retry_count == 2
    assert outcome.error is None
    assert outcome.duration_ms > 0


def test_counters_become_output_and_materialization_metadata() -> None:
    instance = DagsterInstance.get()
    result = defs.counts_job.execute_in_process(instance=instance)
    output = result.get_step_success_events()[0]
    assert output is not None
    materializations = result.asset_materializations_for_node("count_items")
    assert len(materializations) == 1
    metadata = materializations[0].metadata
    assert metadata["processed"].value == 3
    assert metadata["succeeded"].value == 2
    assert metadata["failed"].value == 1
    assert metadata["duration_ms"].value >= 0
    assert metadata["attempt"].value == 1

    # The asset catalog has the history, so the UI can plot it.
    latest = instance.get_latest_materialization_event(materializations[0].asset_key)
    assert latest is not None and latest.run_id == result.run_id

    outputs = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    assert outputs[0].event_specific_data.metadata["processed"].value == 3


def test_direct_invocation_with_build_op_context() -> None:
    import asyncio

    context = build_op_context()
    output = asyncio.run(defs.count_items(context))
    # Direct invocation returns what the wrapper made of the TaskReport.
    assert output.metadata["processed"].value == 3
    assert isinstance(TaskReport(), TaskReport)


def test_summary_line_like_the_seed(capfd) -> None:
    defs.counts_job.execute_in_process(instance=DagsterInstance.get())
    stderr = capfd.readouterr().err
    lines = [line for line in stderr.splitlines() if '"Cron job execution completed"' in line]
    assert len(lines) == 1
    assert '"successCount": 1' in lines[0] and '"processed": 3' in lines[0]
