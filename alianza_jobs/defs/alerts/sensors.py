"""Alerts on failed runs, and one notice on recovery, without a storm while a job keeps failing.

Whether a run alerts is decided from its job's run history alone (first failure of a streak, then
one "still failing" summary per hour of the streak, then one recovery notice), so any sensor tick,
or a retried one, decides the same way. Alerts go to ``ALERT_EMAIL_TO`` through the email queue
and to an optional ``ALERT_WEBHOOK_URL`` directly (:func:`deliver`, which the stale-table alerts of
``freshness.py`` share); ``docs/alerts.md`` says why both.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

import httpx
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRecord,
    RunsFilter,
    RunStatusSensorContext,
    run_failure_sensor,
    run_status_sensor,
)

from alianza_jobs.defs.emails import NewEmail, enqueue_emails
from alianza_jobs.logs import get_logger
from alianza_jobs.platform.results import job_result
from alianza_jobs.resources import AppConfig, Database

SUMMARY_EVERY_SECONDS = 3600
WEBHOOK_TIMEOUT_SECONDS = 5.0
AlertKind = Literal["failure", "still_failing", "recovered"]
_FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]


class Notice(Protocol):
    """What :func:`deliver` sends: a subject and a text, and the labels a webhook receiver (and
    the log line) can route on, ``kind`` first."""

    @property
    def subject(self) -> str: ...

    @property
    def text(self) -> str: ...

    def labels(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Alert:
    """An alert about a job's runs."""

    kind: AlertKind
    job: str
    run_id: str
    url: str
    error: str | None = None
    attempts: int = 1
    failures_in_streak: int = 1
    failing_since: datetime | None = None

    @property
    def subject(self) -> str:
        short = self.run_id[:8]
        if self.kind == "failure":
            return f"[alianza-jobs] {self.job} failed (run {short})"
        if self.kind == "still_failing":
            return f"[alianza-jobs] {self.job} still failing: {self.failures_in_streak} failed runs"
        return f"[alianza-jobs] {self.job} recovered (run {short})"

    def labels(self) -> dict[str, str]:
        return {"kind": self.kind, "job": self.job, "run_id": self.run_id}

    @property
    def text(self) -> str:
        since = self.failing_since.strftime("%Y-%m-%d %H:%M:%SZ") if self.failing_since else "?"
        lines = [self.subject, "", f"Job: {self.job}", f"Run: {self.run_id}", f"Link: {self.url}"]
        if self.kind == "recovered":
            lines.append(f"It had failed {self.failures_in_streak} run(s) in a row since {since}.")
        else:
            lines += [
                f"Error: {self.error or 'unknown'}",
                f"Attempts in this run: {self.attempts}",
                f"Failed runs in a row: {self.failures_in_streak} (since {since})",
            ]
            if self.kind == "still_failing":
                lines.append("You get one such summary per hour while it keeps failing.")
        return "\n".join(lines)


def _created(instance: DagsterInstance, run_id: str) -> datetime:
    [record] = instance.get_run_records(RunsFilter(run_ids=[run_id]), limit=1)
    return record.create_timestamp


def _streak(instance: DagsterInstance, run: DagsterRun) -> list[RunRecord]:
    """Failed runs of the job since its last success, oldest first, up to and including ``run``."""
    created = _created(instance, run.run_id)
    last_success = instance.get_run_records(
        RunsFilter(
            job_name=run.job_name, statuses=[DagsterRunStatus.SUCCESS], created_before=created
        ),
        limit=1,
    )
    since = last_success[0].create_timestamp if last_success else None
    failures = instance.get_run_records(
        RunsFilter(
            job_name=run.job_name,
            statuses=[DagsterRunStatus.FAILURE],
            created_after=since,
            created_before=created,
        ),
        ascending=True,
    )
    return [*failures, *instance.get_run_records(RunsFilter(run_ids=[run.run_id]))]


def decide_on_failure(instance: DagsterInstance, run: DagsterRun, app: AppConfig) -> Alert | None:
    streak = _streak(instance, run)
    first = streak[0]
    outcome = job_result(instance, run.run_id)
    alert = Alert(
        kind="failure",
        job=run.job_name,
        run_id=run.run_id,
        url=app.run_url(run.run_id),
        error=outcome.error,
        attempts=outcome.retry_count + 1,
        failures_in_streak=len(streak),
        failing_since=first.create_timestamp.astimezone(UTC),
    )
    if len(streak) == 1:
        return alert
    start = first.create_timestamp.timestamp()
    hour_now = math.floor((streak[-1].create_timestamp.timestamp() - start) / SUMMARY_EVERY_SECONDS)
    hour_before = math.floor(
        (streak[-2].create_timestamp.timestamp() - start) / SUMMARY_EVERY_SECONDS
    )
    if hour_now > hour_before:
        return Alert(**{**alert.__dict__, "kind": "still_failing"})
    return None


def decide_on_success(instance: DagsterInstance, run: DagsterRun, app: AppConfig) -> Alert | None:
    created = _created(instance, run.run_id)
    previous = instance.get_run_records(
        RunsFilter(job_name=run.job_name, statuses=_FINISHED, created_before=created), limit=1
    )
    if not previous or previous[0].dagster_run.status != DagsterRunStatus.FAILURE:
        return None
    streak = _streak(instance, previous[0].dagster_run)
    return Alert(
        kind="recovered",
        job=run.job_name,
        run_id=run.run_id,
        url=app.run_url(run.run_id),
        failures_in_streak=len(streak),
        failing_since=streak[0].create_timestamp.astimezone(UTC),
    )


async def _enqueue_email(database: Database, app: AppConfig, alert: Notice) -> int:
    emails = [NewEmail(to=to, subject=alert.subject, text=alert.text) for to in app.alert_email_to]
    if not emails:
        return 0
    async with database.engine() as engine:
        tables = await database.platform(engine)
        async with engine.begin() as conn:
            return len(await enqueue_emails(conn, tables, emails))


def _post_webhook(url: str, alert: Notice) -> None:
    # "text" is what a Slack-compatible receiver shows; "alianza" is for receivers that route.
    response = httpx.post(
        url, json={"text": alert.text, "alianza": alert.labels()}, timeout=WEBHOOK_TIMEOUT_SECONDS
    )
    response.raise_for_status()


def deliver(alert: Notice, database: Database, app: AppConfig) -> dict[str, object]:
    """Enqueue the alert's email to each ``ALERT_EMAIL_TO`` (raises if the queue cannot take it),
    then post it to ``ALERT_WEBHOOK_URL`` (logged, not raised, if that fails)."""
    labels = alert.labels()
    log = get_logger(alert=labels.pop("kind"), **labels)
    sent: dict[str, object] = {"emails": asyncio.run(_enqueue_email(database, app, alert))}
    if app.alert_webhook_url:
        try:
            _post_webhook(app.alert_webhook_url, alert)
            sent["webhook"] = True
        except httpx.HTTPError as exc:
            # The email path still carries the alert; a broken webhook must not stop it.
            sent["webhook"] = False
            log.error("Alert webhook failed", error=exc)
    log.warning(f"Alert sent: {alert.subject}", **sent)
    return sent


@run_failure_sensor(
    name="alert_on_run_failure",
    description="Alerts on a failed run: the first failure, then one summary per hour while it "
    "keeps failing (ALERT_EMAIL_TO via the email queue, ALERT_WEBHOOK_URL).",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
)
def alert_on_run_failure(
    context: RunFailureSensorContext, database: Database, app: AppConfig
) -> None:
    alert = decide_on_failure(context.instance, context.dagster_run, app)
    if alert is not None:
        deliver(alert, database, app)


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    name="notify_on_recovery",
    description="One recovery notice when a job succeeds after failing.",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
)
def notify_on_recovery(context: RunStatusSensorContext, database: Database, app: AppConfig) -> None:
    alert = decide_on_success(context.instance, context.dagster_run, app)
    if alert is not None:
        deliver(alert, database, app)
