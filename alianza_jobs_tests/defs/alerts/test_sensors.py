"""Alerting without storms: one alert per failing streak, hourly summaries, one recovery notice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import respx
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    build_run_status_sensor_context,
)
from dagster._core.test_utils import freeze_time
from sqlalchemy import select

from alianza_jobs.db.platform_models import EmailQueue
from alianza_jobs.defs.alerts.sensors import (
    alert_on_run_failure,
    decide_on_failure,
    notify_on_recovery,
)
from alianza_jobs.resources import AppConfig, Database
from alianza_jobs_tests.db.helpers import migrated_engine
from alianza_jobs_tests.defs.emails.fixtures import deliveries_by_id
from alianza_jobs_tests.platform import defs

WEBHOOK = "https://hooks.example.test/services/T000/B000/XXXX"


def _resources(db_url: str) -> dict[str, object]:
    return {
        "database": Database(url=db_url),
        "app": AppConfig(
            email_from="jobs@alianza.test",
            alert_email_to=["oncall@alianza.test"],
            alert_webhook_url=WEBHOOK,
            webserver_url="http://dagster.internal:3000",
        ),
    }


def _evaluate(instance: DagsterInstance, run: DagsterRun, resources: dict[str, object]) -> None:
    """What the daemon does for each finished run: hand it to the matching sensor."""
    final = (
        DagsterEventType.RUN_SUCCESS
        if run.status == DagsterRunStatus.SUCCESS
        else DagsterEventType.RUN_FAILURE
    )
    [record] = instance.get_records_for_run(run.run_id, of_type=final).records
    context = build_run_status_sensor_context(
        sensor_name="alerts",
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources=resources,
    )
    if run.status == DagsterRunStatus.SUCCESS:
        notify_on_recovery(context)
    else:
        alert_on_run_failure(context.for_run_failure())


def _emails(db_url: str) -> list[EmailQueue]:
    async def fetch() -> list[EmailQueue]:
        async with migrated_engine(db_url) as engine, engine.connect() as conn:
            return list((await conn.execute(select(EmailQueue).order_by(EmailQueue.id))).all())

    return asyncio.run(fetch())


async def _deliveries(db_url: str) -> dict[str, object]:
    async with migrated_engine(db_url) as engine:
        return dict(await deliveries_by_id(engine))


def test_ten_failures_one_alert_then_one_recovery(db_url: str) -> None:
    instance = DagsterInstance.get()
    resources = _resources(db_url)
    defs.state_file("toggle-fail").touch()
    with respx.mock(assert_all_called=False) as mock:
        hook = mock.post(WEBHOOK).mock(return_value=httpx.Response(200, text="ok"))
        for _ in range(10):
            result = defs.toggle_job.execute_in_process(instance=instance, raise_on_error=False)
            assert not result.success
            _evaluate(instance, result.dagster_run, resources)
        assert hook.call_count == 1
        emails = _emails(db_url)
        assert len(emails) == 1
        assert emails[0].to_address == "oncall@alianza.test"
        assert emails[0].subject.startswith("[alianza-jobs] toggle failed")
        assert "Error: RuntimeError: upstream is down" in emails[0].text
        assert "http://dagster.internal:3000/runs/" in emails[0].text
        # Queued on the platform, due now; the email queue makes its delivery when it claims it.
        assert emails[0].status == "pending"
        assert asyncio.run(_deliveries(db_url)) == {}

        defs.state_file("toggle-fail").unlink()
        for _ in range(2):
            result = defs.toggle_job.execute_in_process(instance=instance)
            _evaluate(instance, result.dagster_run, resources)
        assert hook.call_count == 2
        emails = _emails(db_url)
        assert len(emails) == 2
        assert emails[1].subject.startswith("[alianza-jobs] toggle recovered")
        assert "failed 10 run(s) in a row" in emails[1].text
        payload = hook.calls.last.request.content
        assert b'"kind":"recovered"' in payload or b'"kind": "recovered"' in payload


def test_a_long_streak_sends_one_summary_per_hour() -> None:
    instance = DagsterInstance.get()
    app = AppConfig(email_from="x@y.test")
    start = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    kinds = []
    # A failure every 10 minutes for 3 hours: 18 failed runs.
    for i in range(18):
        with freeze_time(start + timedelta(minutes=10 * i)):
            run = instance.create_run_for_job(
                job_def=defs.toggle_job, status=DagsterRunStatus.FAILURE
            )
        alert = decide_on_failure(instance, run, app)
        kinds.append(alert.kind if alert else None)
    assert kinds[0] == "failure"
    assert kinds.count("failure") == 1
    # Streak hours 1 and 2 each produce exactly one summary, at their first failure.
    assert [i for i, k in enumerate(kinds) if k == "still_failing"] == [6, 12]


def test_a_broken_webhook_does_not_lose_the_email(db_url: str) -> None:
    instance = DagsterInstance.get()
    defs.state_file("toggle-fail").touch()
    with respx.mock() as mock:
        mock.post(WEBHOOK).mock(return_value=httpx.Response(500))
        result = defs.toggle_job.execute_in_process(instance=instance, raise_on_error=False)
        _evaluate(instance, result.dagster_run, _resources(db_url))
    assert len(_emails(db_url)) == 1
