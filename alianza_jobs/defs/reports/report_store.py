"""Storing a day's report: the ``daily_reports`` upsert and the notification email enqueued at
most once per day in the same transaction, and carrying an earlier report's sessions figures over
once Dagster has pruned that day's runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import DailyReport
from alianza_jobs.db.platform_tables import PlatformTables
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails import NewEmail, enqueue_emails
from alianza_jobs.defs.reports.report_figures import utc_iso

NOTIFICATION_KEY = "notification"


@dataclass(frozen=True)
class StoredReport:
    data: dict[str, Any]
    enqueued_email_ids: list[str]
    """Queue ids enqueued by *this* run (empty when an earlier run already had, or no recipients)."""


async def store_report(
    engine: AsyncEngine,
    tables: PlatformTables,
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
        enqueued: list[str] = []
        if notification is None and emails:
            enqueued = await enqueue_emails(conn, tables, emails)
            notification = {
                "email_queue_ids": enqueued,
                "to": [e.to for e in emails],
                "enqueued_at": utc_iso(utcnow()),
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
