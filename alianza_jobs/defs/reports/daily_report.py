"""``daily_report``: the seed's ``generateDailyReports``, as a daily-partitioned asset.

One partition per UTC day ``D``, covering ``[D 00:00, D+1 00:00)``. The schedule (02:00 UTC) asks
for the last complete day; any range of days can be backfilled from the UI, one run per day.

Each run:

1. counts day ``D`` in the app database, in one statement (one snapshot, so the figures agree with
   each other even while the queue jobs write);
2. reads the sessions the nightly cleanup removed that day from Dagster itself: the cleanup deletes
   rows, so the table cannot say; its materializations of ``user_sessions`` carry the counts;
3. writes ``daily-report-YYYY-MM-DD.md`` to the report storage (atomically);
4. in one transaction, upserts ``daily_reports`` (``report_date`` is unique: a rerun replaces
   ``data``, keeps ``id`` and ``created_at``, and moves ``updated_at``) and enqueues the
   stakeholders' email into ``email_queue``, so delivery gets that queue's retries and
   exactly-once sending. The email is sent once per day, ever: its queue ids are recorded in
   ``data["notification"]``, read under a row lock in the same transaction, and a rerun that finds
   them enqueues nothing and carries them over. Same inputs, same ``data``: a rerun changes nothing
   but ``updated_at``.

How each figure is counted (all windows are ``[D, D+1)`` in UTC):

* videos ready / errored: ``streamings`` rows in status ``ready`` / ``error`` whose ``checked_at``
  falls in the day. The queue task stamps ``checked_at`` each time it looks at a row, and a settled
  row leaves the queue, so for a ready or errored row ``checked_at`` is when it settled.
  ``updated_at`` is not: it moves with any later write (a soft delete, a replay, an admin fix), which
  would drag old videos into later reports. It is the fallback only for rows settled outside the
  queue task (``checked_at`` null), where it is the best we have. Soft-deleted rows still count:
  the video did settle that day, and the report must not change when someone deletes it later;
* emails sent: ``email_queue.sent_at`` in the day;
* emails dead: ``dead_letters`` of source ``email_queue`` whose ``failed_at`` is in the day (a dead
  letter is the event; the row's status may have moved on after a replay);
* emails failed: rows in status ``failed`` (awaiting a retry) last changed that day. The queue keeps
  only each row's latest state, so failed attempts that later succeeded are not counted;
* dead letters by source (``email_queue``, ``streamings``): ``failed_at`` in the day;
* users created: ``users.created_at`` in the day (soft-deleted users included);
* catalog: ``stream_videos`` created / modified in Stream that day (``stream_created``,
  ``stream_modified``);
* sessions cleaned: the sum of ``expired_deleted`` and ``soft_deleted_user_sessions_deleted`` over
  the ``user_sessions`` materializations recorded that day, dry runs left out. The cleanup prunes
  Dagster's run history after its retention (30 days): a rerun of a day whose runs are gone keeps
  the sessions figures its earlier report stored rather than reporting zero.
"""

from __future__ import annotations

import asyncio
import html
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext, AssetRecordsFilter, DailyPartitionsDefinition
from dagster._core.errors import DagsterInvalidPropertyError
from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import Label

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import (
    DailyReport,
    DeadLetter,
    DeadLetterSource,
    EmailQueue,
    EmailStatus,
    Streaming,
    StreamingStatus,
    StreamVideo,
    User,
)
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails import NewEmail, enqueue_emails
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
NOTIFICATION_KEY = "notification"
SESSION_COUNTERS = ("expired_deleted", "soft_deleted_user_sessions_deleted")
# Materializations read per request from the instance; a day has one or two cleanup runs.
MATERIALIZATION_PAGE = 100
# The tables the other jobs maintain, by key: the report reads them, and the lineage graph shows it.
MAINTAINED_TABLES = [
    dg.AssetKey(name) for name in ("streamings", "email_queue", "user_sessions", "stream_videos")
]
USER_SESSIONS = dg.AssetKey("user_sessions")


def report_file_name(day: date) -> str:
    return f"daily-report-{day.isoformat()}.md"


def day_window(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


# -- the figures ------------------------------------------------------------------------------------


def _within(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(column >= start, column < end)


def _settled_within(start: datetime, end: datetime) -> ColumnElement[bool]:
    """When a streamings row settled: ``checked_at``, or ``updated_at`` where it was never checked.

    Written as an OR rather than COALESCE so each side stays a plain column comparison.
    """
    return or_(
        _within(Streaming.checked_at, start, end),
        and_(Streaming.checked_at.is_(None), _within(Streaming.updated_at, start, end)),
    )


def _count(model: type, *where: ColumnElement[bool]) -> Any:
    return select(func.count()).select_from(model).where(*where).scalar_subquery()


def figures_query(start: datetime, end: datetime) -> Select[Any]:
    """Every database figure of the day in one SELECT of scalar subqueries: one snapshot."""
    columns: list[Label[Any]] = [
        _count(
            Streaming, Streaming.status == StreamingStatus.READY.value, _settled_within(start, end)
        ).label("videos_ready"),
        _count(
            Streaming, Streaming.status == StreamingStatus.ERROR.value, _settled_within(start, end)
        ).label("videos_errored"),
        _count(EmailQueue, _within(EmailQueue.sent_at, start, end)).label("emails_sent"),
        _count(
            EmailQueue,
            EmailQueue.status == EmailStatus.FAILED.value,
            _within(EmailQueue.updated_at, start, end),
        ).label("emails_failed"),
        _count(User, _within(User.created_at, start, end)).label("users_created"),
        _count(StreamVideo, _within(StreamVideo.stream_created, start, end)).label(
            "catalog_videos_created"
        ),
        _count(StreamVideo, _within(StreamVideo.stream_modified, start, end)).label(
            "catalog_videos_modified"
        ),
    ]
    for source in DeadLetterSource:
        columns.append(
            _count(
                DeadLetter,
                DeadLetter.source == source.value,
                _within(DeadLetter.failed_at, start, end),
            ).label(f"dead_letters_{source.value}")
        )
    return select(*columns)


async def database_figures(engine: AsyncEngine, start: datetime, end: datetime) -> dict[str, int]:
    async with read_only(engine).connect() as conn:
        row = (await conn.execute(figures_query(start, end))).one()
    return {key: int(value or 0) for key, value in row._mapping.items()}


@dataclass(frozen=True)
class SessionCleanup:
    expired_deleted: int = 0
    soft_deleted_user_sessions_deleted: int = 0
    runs: int = 0

    @property
    def cleaned(self) -> int:
        return self.expired_deleted + self.soft_deleted_user_sessions_deleted


def _metadata_value(metadata: Mapping[str, Any], key: str) -> Any:
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def sessions_cleaned(
    instance: dg.DagsterInstance, start: datetime, end: datetime
) -> SessionCleanup:
    """Sum the cleanup counts of the ``user_sessions`` materializations recorded in ``[start, end)``.

    Blocking (the instance's storage API): call it through ``asyncio.to_thread``.
    """
    totals = dict.fromkeys(SESSION_COUNTERS, 0)
    runs = 0
    cursor: str | None = None
    # The storage filters are strict inequalities on float timestamps: ask a second wider either
    # way and apply the half-open window here, so a materialization at 00:00:00.000 is counted once.
    records_filter = AssetRecordsFilter(
        asset_key=USER_SESSIONS,
        after_timestamp=start.timestamp() - 1,
        before_timestamp=end.timestamp() + 1,
    )
    while True:
        page = instance.fetch_materializations(
            records_filter, limit=MATERIALIZATION_PAGE, cursor=cursor, ascending=True
        )
        for record in page.records:
            if not start.timestamp() <= record.timestamp < end.timestamp():
                continue
            materialization = record.asset_materialization
            if materialization is None:
                continue
            metadata = materialization.metadata
            if _metadata_value(metadata, "dry_run") is True:
                continue  # a dry run deleted nothing
            runs += 1
            for key in SESSION_COUNTERS:
                value = _metadata_value(metadata, key)
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] += value
        if not page.has_more:
            break
        cursor = page.cursor
    return SessionCleanup(
        expired_deleted=totals["expired_deleted"],
        soft_deleted_user_sessions_deleted=totals["soft_deleted_user_sessions_deleted"],
        runs=runs,
    )


def report_data(
    day: date, start: datetime, end: datetime, db: Mapping[str, int], sessions: SessionCleanup
) -> dict[str, Any]:
    """The JSON stored in ``daily_reports.data`` (the notification marker is added on storing)."""
    return {
        "report_date": day.isoformat(),
        "window": {"start": _iso(start), "end": _iso(end), "timezone": "UTC"},
        "videos": {"ready": db["videos_ready"], "errored": db["videos_errored"]},
        "emails": {
            "sent": db["emails_sent"],
            "failed": db["emails_failed"],
            "dead": db[f"dead_letters_{DeadLetterSource.EMAIL_QUEUE.value}"],
        },
        "dead_letters": {
            source.value: db[f"dead_letters_{source.value}"] for source in DeadLetterSource
        },
        "users": {"created": db["users_created"]},
        "sessions": {
            "cleaned": sessions.cleaned,
            "expired_deleted": sessions.expired_deleted,
            "soft_deleted_user_sessions_deleted": sessions.soft_deleted_user_sessions_deleted,
            "cleanup_runs": sessions.runs,
        },
        "catalog": {
            "videos_created": db["catalog_videos_created"],
            "videos_modified": db["catalog_videos_modified"],
        },
    }


def headline(data: Mapping[str, Any]) -> dict[str, int]:
    """The numbers that go into the materialization's metadata (and the UI's plots)."""
    return {
        "videos_ready": data["videos"]["ready"],
        "videos_errored": data["videos"]["errored"],
        "emails_sent": data["emails"]["sent"],
        "emails_failed": data["emails"]["failed"],
        "emails_dead": data["emails"]["dead"],
        "users_created": data["users"]["created"],
        "sessions_cleaned": data["sessions"]["cleaned"],
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the report file and the email ------------------------------------------------------------------


def _rows(data: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    return [
        ("Videos", "ready", data["videos"]["ready"]),
        ("Videos", "errored", data["videos"]["errored"]),
        ("Emails", "sent", data["emails"]["sent"]),
        ("Emails", "failed, awaiting a retry", data["emails"]["failed"]),
        ("Emails", "dead (dead-lettered)", data["emails"]["dead"]),
        ("Users", "created", data["users"]["created"]),
        ("Sessions", "cleaned", data["sessions"]["cleaned"]),
        ("Stream catalog", "videos uploaded", data["catalog"]["videos_created"]),
        ("Stream catalog", "videos changed", data["catalog"]["videos_modified"]),
        ("Dead letters", "videos", data["dead_letters"][DeadLetterSource.STREAMINGS.value]),
    ]


def render_markdown(data: Mapping[str, Any]) -> str:
    """The report file: readable as plain text and as rendered markdown. Depends on ``data`` only,
    so a rerun over the same data writes the same bytes."""
    window = data["window"]
    sessions = data["sessions"]
    lines = [
        f"# Alianza daily report: {data['report_date']}",
        "",
        f"Covers {window['start']} to {window['end']} (UTC, end excluded).",
        "",
        "| Area | Figure | Count |",
        "|---|---|---:|",
        *(f"| {area} | {figure} | {count:,} |" for area, figure, count in _rows(data)),
        "",
        f"Sessions cleaned: {sessions['expired_deleted']:,} expired and "
        f"{sessions['soft_deleted_user_sessions_deleted']:,} of deleted accounts, "
        f"in {sessions['cleanup_runs']} cleanup run(s).",
        "",
        "Videos count on the day they settled (`checked_at`); emails on the day they were sent "
        "or dead-lettered; failed emails are those still awaiting a retry whose last attempt was "
        "that day.",
        "",
    ]
    return "\n".join(lines)


def render_html(data: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(area)}</td><td>{html.escape(figure)}</td>"
        f'<td style="text-align:right">{count:,}</td></tr>'
        for area, figure, count in _rows(data)
    )
    window = data["window"]
    return (
        f"<h1>Alianza daily report: {html.escape(data['report_date'])}</h1>"
        f"<p>Covers {html.escape(window['start'])} to {html.escape(window['end'])} (UTC).</p>"
        "<table><thead><tr><th>Area</th><th>Figure</th><th>Count</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def notification_rows(
    data: Mapping[str, Any], recipients: Sequence[str], run_link: str | None
) -> list[NewEmail]:
    """One email per recipient (the queue sends one address per row)."""
    subject = f"Alianza daily report for {data['report_date']}"
    text = render_markdown(data)
    if run_link:
        text += f"\nRun: {run_link}\n"
    body_html = render_html(data)
    unique = list(dict.fromkeys(r.strip() for r in recipients if r.strip()))
    return [NewEmail(to=to, subject=subject, text=text, html=body_html) for to in unique]


# -- storing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredReport:
    data: dict[str, Any]
    enqueued_email_ids: list[int]
    """Queue ids enqueued by *this* run (empty when an earlier run already had, or no recipients)."""


async def store_report(
    engine: AsyncEngine,
    day: date,
    data: Mapping[str, Any],
    emails: Sequence[NewEmail],
) -> StoredReport:
    """Upsert the day's row and enqueue its email at most once, in one transaction.

    The row is created first (``ON CONFLICT DO NOTHING``) and then read under a row lock, so two
    runs of one day serialize here (Postgres: the lock; SQLite: ``BEGIN IMMEDIATE``) and the second
    sees the first's notification marker. A crash before the commit leaves neither row nor email.
    """
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    async with engine.begin() as conn:
        await conn.execute(
            dialect.insert(DailyReport)
            .values(report_date=day, data={})
            .on_conflict_do_nothing(index_elements=[DailyReport.report_date])
        )
        current = (
            await conn.execute(
                select(DailyReport.data).where(DailyReport.report_date == day).with_for_update()
            )
        ).scalar_one()
        notification = current.get(NOTIFICATION_KEY) if isinstance(current, dict) else None
        enqueued: list[int] = []
        if notification is None and emails:
            enqueued = await enqueue_emails(conn, emails)
            notification = {
                "email_queue_ids": enqueued,
                "to": [e.to for e in emails],
                "enqueued_at": _iso(utcnow()),
            }
        final = dict(data)
        if notification is not None:
            final[NOTIFICATION_KEY] = notification
        await conn.execute(
            update(DailyReport).where(DailyReport.report_date == day).values(data=final)
        )
    return StoredReport(final, enqueued)


async def stored_data(engine: AsyncEngine, day: date) -> dict[str, Any] | None:
    async with read_only(engine).connect() as conn:
        data = await conn.scalar(select(DailyReport.data).where(DailyReport.report_date == day))
    return data if isinstance(data, dict) else None


def keep_earlier_sessions(data: dict[str, Any], earlier: Mapping[str, Any] | None) -> bool:
    """Carry the earlier report's sessions figures over when Dagster no longer has that day's runs.

    The cleanup prunes finished runs (and their events) after ``run_retention_days``, so a rerun of
    an old day finds no materializations and would report 0 sessions cleaned. Zero cleanup runs
    read now while the stored report saw some means the history is gone, not that nothing ran.
    """
    previous = (earlier or {}).get("sessions")
    if data["sessions"]["cleanup_runs"] or not isinstance(previous, dict):
        return False
    if not previous.get("cleanup_runs"):
        return False
    data["sessions"] = dict(previous)
    return True


def _run_link(context: AssetExecutionContext, app: AppConfig) -> str | None:
    try:
        return app.run_url(context.run.run_id)
    except DagsterInvalidPropertyError:  # invoked directly: there is no run to link to
        return None


# -- the asset --------------------------------------------------------------------------------------


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
        db = await database_figures(engine, start, end)
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
        stored = await store_report(engine, day, data, emails)

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
    "PARTITIONS",
    "TASK",
    "SessionCleanup",
    "StoredReport",
    "assets",
    "build_daily_report",
    "daily_reports",
    "database_figures",
    "day_window",
    "job",
    "keep_earlier_sessions",
    "render_markdown",
    "report_data",
    "sessions_cleaned",
    "store_report",
]
