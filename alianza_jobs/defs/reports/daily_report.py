"""``daily_report``: one ``daily_reports`` row per UTC day as a daily-partitioned asset (the 02:00
schedule asks for the last complete day; any range can be backfilled), with its markdown file in
the report storage and one email to the stakeholders per day, ever; see docs/reports.md."""

from __future__ import annotations

import asyncio
import warnings
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
from dagster import AssetExecutionContext, DailyPartitionsDefinition
from dagster._core.errors import DagsterInvalidPropertyError

from alianza_jobs.db.models import DeadLetterSource
from alianza_jobs.defs.reports.report_figures import (
    database_figures,
    day_window,
    headline,
    report_data,
    sessions_cleaned,
)
from alianza_jobs.defs.reports.report_render import (
    notification_rows,
    render_markdown,
    report_file_name,
)
from alianza_jobs.defs.reports.report_store import (
    NOTIFICATION_KEY,
    keep_earlier_sessions,
    store_report,
    stored_data,
)
from alianza_jobs.logs import get_logger
from alianza_jobs.platform.assets import TABLE_GROUP
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import AppConfig, Database, ReportStorage

TASK = TaskSpec(
    name="daily_report",
    description=(
        "Counts one UTC day (videos settled, emails sent/failed/dead, users created, sessions "
        "cleaned), upserts daily_reports, writes the report file and emails it via the queue."
    ),
    cron="0 2 * * *",
    timeout=timedelta(minutes=30),
    retry=Retry(max_retries=3, delay=timedelta(seconds=30)),
    assets=["daily_reports"],
)

# The first day that can be reported (and backfilled). A constant: the partitions must be the same
# in every process (UI, daemon, runs), so they cannot come from the environment.
FIRST_REPORT_DAY = "2025-01-01"
PARTITIONS = DailyPartitionsDefinition(start_date=FIRST_REPORT_DAY, timezone="UTC")
# The tables the other jobs maintain, by key: the report reads them, and the lineage graph shows it.
MAINTAINED_TABLES = [
    dg.AssetKey(name) for name in ("streamings", "email_queue", "user_sessions", "stream_videos")
]


def _run_link(context: AssetExecutionContext, app: AppConfig) -> str | None:
    try:
        return app.run_url(context.run.run_id)
    except DagsterInvalidPropertyError:  # invoked directly: there is no run to link to
        return None


@TASK.asset(
    name="daily_reports",
    partitions_def=PARTITIONS,
    deps=MAINTAINED_TABLES,
    group_name=TABLE_GROUP,
    kinds={"table"},
    description=(
        "One row per UTC day in the daily_reports table (and a markdown file in the report "
        "storage): videos settled, emails sent/failed/dead, users created, sessions cleaned."
    ),
)
async def build_daily_report(
    context: AssetExecutionContext,
    database: Database,
    app: AppConfig,
    reports: ReportStorage,
) -> TaskReport:
    day = date.fromisoformat(context.partition_key)
    start, end = day_window(day)
    log = get_logger(report_date=day.isoformat())

    sessions = await asyncio.to_thread(sessions_cleaned, context.instance, start, end)
    async with database.engine() as engine:
        tables = await database.platform(engine)
        db = await database_figures(engine, tables, start, end)
        data = report_data(day, start, end, db, sessions)
        if keep_earlier_sessions(data, await stored_data(engine, day)):
            log.info(
                "No cleanup runs of that day left in Dagster's history (pruned after the "
                "retention); keeping the sessions figures of the earlier report"
            )
        markdown = render_markdown(data)
        # The file first: the email points stakeholders at it, and storing is the last step.
        path: Path = await reports.write_text(report_file_name(day), markdown)
        emails = notification_rows(data, app.alert_email_to, _run_link(context, app))
        stored = await store_report(engine, tables, day, data, emails)

    if stored.enqueued_email_ids:
        notification = "enqueued"
    elif NOTIFICATION_KEY in stored.data:
        notification = "already enqueued by an earlier run"
    else:
        notification = "skipped: ALERT_EMAIL_TO is empty"
    figures = headline(data)
    log.info(
        "Daily report stored",
        path=str(path),
        notification=notification,
        **figures,
    )
    return TaskReport(
        counts={**figures, "notification_emails_enqueued": len(stored.enqueued_email_ids)},
        metadata={
            "report_date": day.isoformat(),
            "path": dg.MetadataValue.path(str(path)),
            "report": dg.MetadataValue.md(markdown),
            "notification": notification,
            "dead_letters_streamings": data["dead_letters"][DeadLetterSource.STREAMINGS.value],
            "sessions_cleanup_runs": data["sessions"]["cleanup_runs"],
            "catalog_videos_created": data["catalog"]["videos_created"],
            "catalog_videos_modified": data["catalog"]["videos_modified"],
        },
    )


daily_reports = build_daily_report
with warnings.catch_warnings():
    # Dagster infers the job's partitions from its assets and deprecates saying them again, but
    # TaskSpec.schedule reads them off the unresolved job to request the last complete day.
    warnings.simplefilter("ignore", DeprecationWarning)
    job = TASK.asset_job(selection=[daily_reports], partitions_def=PARTITIONS)
assets = [daily_reports]
__all__ = [
    "FIRST_REPORT_DAY",
    "PARTITIONS",
    "TASK",
    "assets",
    "build_daily_report",
    "daily_reports",
    "job",
]
