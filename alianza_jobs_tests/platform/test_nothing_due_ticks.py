"""A queue's tick that finds nothing due records the job's tables as current (a runless
materialization), so a quiet queue stays fresh; the overlap guard's skip does not, so a stuck run
lets them go stale; and a failure to record them never stops the tick from skipping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    OpExecutionContext,
    build_schedule_context,
)

from alianza_jobs.platform.schedules import Backlog
from alianza_jobs.platform.task import TaskReport, TaskSpec
from alianza_jobs.settings import load_settings

TICK = datetime(2026, 12, 2, 12, 5, tzinfo=UTC)
QUEUE = TaskSpec(
    name="quiet_queue",
    description="A queue whose probe finds nothing due.",
    cron="*/5 * * * *",
    timeout=timedelta(seconds=5),
    assets=["quiet_table", "quiet_log"],
    backlog=lambda database: Backlog(0, "due things"),
)


@QUEUE.op
async def drain_queue(context: OpExecutionContext) -> TaskReport:
    return TaskReport()


quiet_job = QUEUE.job(drain_queue)


def _tick(instance: DagsterInstance, **env: str) -> Any:
    schedule = QUEUE.schedule(quiet_job, load_settings(env))
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=TICK, resources={"database": object()}
    )
    return schedule.evaluate_tick(context)


def _updates(instance: DagsterInstance, table: str) -> list[Any]:
    return list(instance.fetch_materializations(AssetKey(table), limit=10).records)


def test_nothing_due_skips_and_records_each_table_as_current() -> None:
    instance = DagsterInstance.get()
    result = _tick(instance)
    assert not result.run_requests
    assert result.skip_message == "nothing due: 0 due things"
    for table in ("quiet_table", "quiet_log"):
        [record] = _updates(instance, table)
        assert record.run_id == ""  # runless: no run was launched for it
        materialization = record.asset_materialization
        assert materialization is not None
        assert {k: v.value for k, v in materialization.metadata.items()} == {
            "due": 0,
            "source": "schedule tick: nothing due",
            "scheduled_time": TICK.isoformat(),
        }
        assert materialization.description == "Current as of quiet_queue's tick: 0 due things"


def test_a_tick_skipped_for_an_active_run_records_nothing() -> None:
    instance = DagsterInstance.get()
    run = instance.create_run_for_job(job_def=quiet_job, status=DagsterRunStatus.STARTED)
    result = _tick(instance)
    assert run.run_id in (result.skip_message or "")
    assert _updates(instance, "quiet_table") == []


def test_every_tick_runs_without_event_triggers_and_records_nothing() -> None:
    instance = DagsterInstance.get()
    result = _tick(instance, ALIANZA_EVENT_TRIGGERS="false")
    assert len(result.run_requests) == 1
    assert _updates(instance, "quiet_table") == []


def test_a_failure_to_record_still_skips_the_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    instance = DagsterInstance.get()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("event log unavailable")

    monkeypatch.setattr(instance, "report_runless_asset_event", refuse)
    result = _tick(instance)
    assert not result.run_requests
    assert result.skip_message == "nothing due: 0 due things"
