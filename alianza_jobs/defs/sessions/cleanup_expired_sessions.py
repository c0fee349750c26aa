"""``cleanup_expired_sessions``: deletes expired login sessions, and every session of a
soft-deleted user, in bounded batches of short transactions, then prunes Dagster's finished runs
older than the retention; see docs/sessions.md."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
from dagster import DagsterRunStatus, OpExecutionContext, RunsFilter
from pydantic import Field
from sqlalchemy import ColumnElement, Table, delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.platform_tables import PlatformTables
from alianza_jobs.db.types import utcnow
from alianza_jobs.logs import TaskLogger, get_logger
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import Database

TASK = TaskSpec(
    name="cleanup_expired_sessions",
    description=(
        "Deletes expired sessions and the sessions of soft-deleted users in bounded batches, and "
        "prunes Dagster run history older than the retention."
    ),
    cron="0 2 * * *",
    timeout=timedelta(minutes=30),
    retry=Retry(max_retries=1, delay=timedelta(seconds=60)),
    assets=["user_sessions"],
)

# Only finished runs are pruned: a queued or running one is still someone's business.
FINISHED_STATUSES = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
RUN_PRUNE_PAGE = 100


class CleanupConfig(dg.Config):
    batch_size: int = Field(default=5000, ge=1, description="Sessions deleted per transaction.")
    run_retention_days: int = Field(
        default=30, ge=1, description="Finished Dagster runs older than this many days are deleted."
    )
    dry_run: bool = Field(default=False, description="Count what would go; delete nothing.")


def expired(tables: PlatformTables, now: datetime) -> ColumnElement[bool]:
    return tables.user_sessions.c.expires_at <= now


def of_soft_deleted_user(tables: PlatformTables) -> ColumnElement[bool] | None:
    """None when the platform's users have no soft delete (the map names no ``deleted_at``)."""
    users, sessions = tables.users, tables.user_sessions
    if "deleted_at" not in users.c:
        return None
    return exists().where(users.c.id == sessions.c.user_id, users.c.deleted_at.is_not(None))


async def delete_in_batches(
    engine: AsyncEngine,
    sessions: Table,
    condition: ColumnElement[bool],
    *,
    batch_size: int,
    log: TaskLogger,
) -> int:
    """Delete matching sessions ``batch_size`` at a time, one transaction per batch."""
    total = 0
    batches = 0
    started = time.perf_counter()
    while True:
        victims = select(sessions.c.id).where(condition).limit(batch_size)
        async with engine.begin() as conn:
            result = await conn.execute(delete(sessions).where(sessions.c.id.in_(victims)))
        deleted = int(result.rowcount or 0)
        if deleted == 0:
            break
        total += deleted
        batches += 1
        log.info(
            "Deleted a batch of sessions",
            batch=batches,
            deleted=deleted,
            total=total,
            elapsed_ms=round((time.perf_counter() - started) * 1000),
        )
        if deleted < batch_size:
            break
    return total


async def count_sessions(
    engine: AsyncEngine, sessions: Table, condition: ColumnElement[bool]
) -> int:
    async with read_only(engine).connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(sessions).where(condition))
    return int(count or 0)


def _old_runs(cutoff: datetime) -> RunsFilter:
    return RunsFilter(created_before=cutoff, statuses=FINISHED_STATUSES)


def _oldest_run_ids(instance: dg.DagsterInstance, cutoff: datetime, limit: int) -> list[str]:
    records = instance.get_run_records(
        filters=_old_runs(cutoff), limit=limit, order_by="create_timestamp", ascending=True
    )
    return [record.dagster_run.run_id for record in records]


def _delete_runs(instance: dg.DagsterInstance, run_ids: list[str]) -> None:
    for run_id in run_ids:
        instance.delete_run(run_id)  # the run and every event it logged
        _remove_run_shard(instance, run_id)


def _remove_run_shard(instance: dg.DagsterInstance, run_id: str) -> None:
    """Remove the run's own event-log file, which Dagster's default SQLite storage leaves behind.

    That storage keeps each run's events in ``history/runs/<run_id>.db``; ``delete_run`` empties the
    file but leaves it (about 120 KB of schema), so at a few thousand runs a day history would still
    grow by hundreds of MB a day. Storages without per-run files (Postgres) have no
    ``path_for_shard`` and are left alone.
    """
    path_for_shard = getattr(instance.event_log_storage, "path_for_shard", None)
    if not callable(path_for_shard):
        return
    shard = Path(path_for_shard(run_id))
    for leftover in (
        shard,
        *(shard.with_name(shard.name + s) for s in ("-wal", "-shm", "-journal")),
    ):
        leftover.unlink(missing_ok=True)


async def prune_run_history(
    instance: dg.DagsterInstance,
    *,
    older_than: datetime,
    log: TaskLogger,
    dry_run: bool = False,
) -> int:
    """Delete finished runs created before ``older_than``, with their events; returns how many.

    The instance's storage API is blocking, so each page runs in a worker thread: the event loop
    (and with it the task's timeout) stays responsive between pages.
    """
    if dry_run:
        return await asyncio.to_thread(instance.get_runs_count, _old_runs(older_than))
    pruned = 0
    seen: set[str] = set()
    while True:
        page = await asyncio.to_thread(_oldest_run_ids, instance, older_than, RUN_PRUNE_PAGE)
        # A page of runs already deleted means the storage ignored the deletes: stop, never spin.
        if not page or seen.issuperset(page):
            break
        seen.update(page)
        await asyncio.to_thread(_delete_runs, instance, page)
        pruned += len(page)
        log.info("Pruned old runs", runs=len(page), total=pruned)
    return pruned


@TASK.op
async def delete_expired_sessions(
    context: OpExecutionContext, config: CleanupConfig, database: Database
) -> TaskReport:
    log = get_logger(dry_run=config.dry_run)
    now = utcnow()
    report = TaskReport(
        metadata={"dry_run": config.dry_run, "run_retention_days": config.run_retention_days}
    )
    # Expired first; then the live sessions of soft-deleted users (their expired ones are gone by
    # then, so each session is counted once).
    async with database.engine() as engine:
        tables = await database.platform(engine)
        sessions = tables.user_sessions
        soft_deleted = of_soft_deleted_user(tables)
        kinds = {
            "expired_deleted": expired(tables, now),
            "soft_deleted_user_sessions_deleted": None
            if soft_deleted is None
            else soft_deleted & ~expired(tables, now),
        }
        for key, condition in kinds.items():
            if condition is None:
                report.add(key, 0)
            elif config.dry_run:
                report.add(key, await count_sessions(engine, sessions, condition))
            else:
                removed = await delete_in_batches(
                    engine,
                    sessions,
                    condition,
                    batch_size=config.batch_size,
                    log=log.child(kind=key),
                )
                report.add(key, removed)
    report.add(
        "runs_pruned",
        await prune_run_history(
            context.instance,
            older_than=now - timedelta(days=config.run_retention_days),
            log=log,
            dry_run=config.dry_run,
        ),
    )
    log.info("Session cleanup finished", **report.counts)
    return report


job = TASK.job(delete_expired_sessions)
