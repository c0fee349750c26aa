"""The figures of one UTC day: every count from the app database in one statement (one snapshot),
the sessions the nightly cleanup removed read from Dagster's materializations of
``user_sessions``, and the JSON they make up in ``daily_reports.data``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
from dagster import AssetRecordsFilter
from sqlalchemy import ColumnElement, Select, Table, and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import Label

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import (
    DeadLetter,
    DeadLetterSource,
    EmailDelivery,
    EmailStatus,
    StreamingStatus,
    StreamVideo,
    VideoCheck,
)
from alianza_jobs.db.platform_tables import PlatformTables, keyed_by

CHECKS: Table = VideoCheck.__table__  # type: ignore[assignment]
SESSION_COUNTERS = ("expired_deleted", "soft_deleted_user_sessions_deleted")
# Materializations read per request from the instance; a day has one or two cleanup runs.
MATERIALIZATION_PAGE = 100
USER_SESSIONS = dg.AssetKey("user_sessions")


def day_window(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _within(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(column >= start, column < end)


def _videos_settled(
    tables: PlatformTables, state: StreamingStatus, start: datetime, end: datetime
) -> Any:
    """Platform rows in ``state`` whose check the video queue made within the window: the platform
    row has no settle time of its own, our ``video_checks`` row does."""
    s = tables.streamings
    return (
        select(func.count())
        .select_from(CHECKS.join(s, keyed_by(s, CHECKS.c.streaming_id)))
        .where(
            s.c.status == tables.status("streamings", state.value),
            _within(CHECKS.c.checked_at, start, end),
        )
        .scalar_subquery()
    )


def _count(model: type, *where: ColumnElement[bool]) -> Any:
    return select(func.count()).select_from(model).where(*where).scalar_subquery()


def figures_query(tables: PlatformTables, start: datetime, end: datetime) -> Select[Any]:
    """Every database figure of the day in one SELECT of scalar subqueries: one snapshot."""
    users = tables.users
    columns: list[Label[Any]] = [
        _videos_settled(tables, StreamingStatus.READY, start, end).label("videos_ready"),
        _videos_settled(tables, StreamingStatus.ERROR, start, end).label("videos_errored"),
        # Our deliveries, not the platform rows: their sent time and state are the jobs' own.
        _count(EmailDelivery, _within(EmailDelivery.sent_at, start, end)).label("emails_sent"),
        _count(
            EmailDelivery,
            EmailDelivery.status == EmailStatus.FAILED.value,
            _within(EmailDelivery.updated_at, start, end),
        ).label("emails_failed"),
        select(func.count())
        .select_from(users)
        .where(_within(users.c.created_at, start, end))
        .scalar_subquery()
        .label("users_created"),
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


FIGURE_KEYS = (
    "videos_ready",
    "videos_errored",
    "emails_sent",
    "emails_failed",
    "users_created",
    "catalog_videos_created",
    "catalog_videos_modified",
    *(f"dead_letters_{source.value}" for source in DeadLetterSource),
)


async def database_figures(
    engine: AsyncEngine, tables: PlatformTables, start: datetime, end: datetime
) -> dict[str, int]:
    async with read_only(engine).connect() as conn:
        row = (await conn.execute(figures_query(tables, start, end))).one()
    figures = {key: int(value or 0) for key, value in row._mapping.items()}
    assert tuple(figures) == FIGURE_KEYS, "FIGURE_KEYS names every figure, in order"
    return figures


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
        "window": {"start": utc_iso(start), "end": utc_iso(end), "timezone": "UTC"},
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


def utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
