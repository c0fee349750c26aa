"""The video queue's statements: lease every due row to one owner, read back the rows still ours
(by uid, oldest, longest unchecked), settle the rows that have no uid, give rows back unchanged,
and record dead letters once per row. Every statement is bulk: none is issued per row.

A queued video is a platform ``streamings`` row; its lease, attempts, check time and error reason
are the jobs' own, in ``video_checks`` (keyed by the row's id as text), made the first time the
row is leased. The platform row gets only what the TypeScript package wrote: its status and
duration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.db.claims import lease_is_free, release_rows, update_by_key
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import DeadLetter, DeadLetterSource, StreamingStatus, VideoCheck
from alianza_jobs.db.platform_tables import PlatformTables, key_as_text
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos.reconcile import PROVIDER, LeasedRow

NO_EXTERNAL_ID = "no external id: nothing to ask Cloudflare Stream about"
CHECKS: Table = VideoCheck.__table__  # type: ignore[assignment]
PLATFORM_COLUMNS = ("status", "duration")


def queued(tables: PlatformTables) -> ColumnElement[bool]:
    s = tables.streamings
    # status/provider let the platform's (status, provider) index narrow every look-up to the
    # queue, however large the table of settled videos grows.
    return and_(
        s.c.status == tables.status("streamings", StreamingStatus.QUEUED.value),
        s.c.provider == PROVIDER,
    )


def owned(tables: PlatformTables, owner: str) -> Select[Any]:
    """The join of our leased checks with their still-queued platform rows."""
    s = tables.streamings
    # Joined on the check's key, so the look-ups that start from the platform's rows (a page of
    # uids, by the external_id index) find each check by its primary key: 770 probes, where
    # starting from the checks leased to us probed the platform's key 100,000 times a page.
    return (
        select()
        .select_from(CHECKS.join(s, CHECKS.c.streaming_id == key_as_text(s)))
        .where(CHECKS.c.locked_by == owner, queued(tables))
    )


def missing_external_id(streamings: Table) -> ColumnElement[bool]:
    return or_(streamings.c.external_id.is_(None), func.trim(streamings.c.external_id) == "")


def count_due(conn: Connection, tables: PlatformTables, *, now: datetime, cap: int) -> int:
    """How many rows a run would lease now, counting no further than ``cap`` (the work probe's
    question, on a synchronous connection): queued, not deleted, and not leased to anyone."""
    s = tables.streamings
    due = [queued(tables)]
    if "deleted_at" in s.c:
        due.append(s.c.deleted_at.is_(None))
    rows = (
        select(literal(1))
        .select_from(s.outerjoin(CHECKS, CHECKS.c.streaming_id == key_as_text(s)))
        .where(*due, or_(CHECKS.c.streaming_id.is_(None), lease_is_free(CHECKS, now)))
        .limit(cap)
        .subquery()
    )
    return int(conn.scalar(select(func.count()).select_from(rows)) or 0)


async def lease_due_rows(
    engine: AsyncEngine,
    tables: PlatformTables,
    *,
    owner: str,
    lease: timedelta,
    now: datetime | None = None,
    external_ids: Sequence[str] | None = None,
) -> int:
    """Lease every due row in one statement; returns how many. Nothing is read back: at 100,000
    rows the ids alone would be the largest thing this task holds.

    One INSERT ... SELECT ... ON CONFLICT: a row never leased gets its check row, a row whose
    lease is free gets the new lease, a row someone holds is left alone. Two claimers at once
    cannot both win a row: the second's insert or update waits for the first's to commit, and
    the conflict's WHERE then sees the lease taken.

    ``external_ids``: only the rows of these Stream uids (the webhooks' videos).
    """
    now = now or utcnow()
    s = tables.streamings
    until = now + lease
    due = [queued(tables)]
    if "deleted_at" in s.c:
        due.append(s.c.deleted_at.is_(None))
    if external_ids is not None:
        due.append(s.c.external_id.in_(list(external_ids)))
    candidates = (
        select(
            key_as_text(s),
            literal(until, CHECKS.c.locked_until.type),
            literal(owner, CHECKS.c.locked_by.type),
        )
        .select_from(s.outerjoin(CHECKS, CHECKS.c.streaming_id == key_as_text(s)))
        .where(*due, or_(CHECKS.c.streaming_id.is_(None), lease_is_free(CHECKS, now)))
        # One order for every claimer: two leasing at once then meet on the same first row, and
        # the second waits there, instead of each holding a row the other needs next. The key's
        # text, which no index provides, so Postgres sorts: the join has finished before the
        # first insert. Streamed instead, a join planned against an empty-looking video_checks
        # (a first run on a big queue) rescans the heap its own inserts grow, for every row:
        # 58 s for 100,000 rows, against under 2 s this way.
        .order_by(key_as_text(s))
    )
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(CHECKS).from_select(
        ["streaming_id", "locked_until", "locked_by"],
        # SQLite parses `SELECT ... WHERE x ON CONFLICT` as a join constraint without it.
        candidates.where(true()) if dialect is sqlite else candidates,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[CHECKS.c.streaming_id],
        set_={"locked_until": stmt.excluded.locked_until, "locked_by": stmt.excluded.locked_by},
        where=lease_is_free(CHECKS, now),
    )
    async with engine.begin() as conn:
        if dialect is sqlite:
            return int((await conn.execute(stmt)).rowcount or 0)
        # psycopg reports no row count for INSERT ... ON CONFLICT; count what it returns instead,
        # in the server (a CTE), so no id crosses the wire.
        leased = stmt.returning(CHECKS.c.streaming_id).cte("leased")
        return int(await conn.scalar(select(func.count()).select_from(leased)) or 0)


async def count_owned(engine: AsyncEngine, tables: PlatformTables, owner: str) -> int:
    async with read_only(engine).connect() as conn:
        count = await conn.scalar(owned(tables, owner).add_columns(func.count()))
    return int(count or 0)


async def oldest_owned(engine: AsyncEngine, tables: PlatformTables, owner: str) -> datetime | None:
    """When the oldest row still ours was created: where the listing has to start."""
    s = tables.streamings
    async with read_only(engine).connect() as conn:
        oldest: datetime | None = await conn.scalar(
            owned(tables, owner).add_columns(func.min(s.c.created_at))
        )
    return oldest


async def next_unseen_uids(
    engine: AsyncEngine, tables: PlatformTables, owner: str, limit: int
) -> list[str]:
    """Distinct uids of rows still ours, never-checked first, then the longest unchecked."""
    s = tables.streamings
    stmt = (
        owned(tables, owner)
        .add_columns(s.c.external_id)
        .where(s.c.external_id.is_not(None))
        .group_by(s.c.external_id)
        .order_by(func.min(CHECKS.c.checked_at).nulls_first(), s.c.external_id)
        .limit(limit)
    )
    async with read_only(engine).connect() as conn:
        return [uid for uid in (await conn.scalars(stmt)).all() if uid]


async def owned_rows_of(
    engine: AsyncEngine, tables: PlatformTables, owner: str, uids: Sequence[str]
) -> list[LeasedRow]:
    """Our rows that name any of ``uids`` (several rows may share one video)."""
    s = tables.streamings
    stmt = (
        owned(tables, owner)
        .add_columns(CHECKS.c.streaming_id, s.c.external_id, CHECKS.c.attempts)
        .where(s.c.external_id.in_(list(uids)))
    )
    async with read_only(engine).connect() as conn:
        return [
            LeasedRow(r.streaming_id, r.external_id, r.attempts)
            for r in (await conn.execute(stmt)).all()
        ]


def write_platform(tables: PlatformTables, changes: Sequence[Mapping[str, Any]]) -> Any:
    """The platform half of a settle: each row's status and duration, for the ids written."""
    s = tables.streamings
    by_id = {
        change["id"]: {k: change[k] for k in PLATFORM_COLUMNS if k in change}
        for change in changes
        if any(k in change for k in PLATFORM_COLUMNS)
    }

    async def write(conn: AsyncConnection, written: list[Any]) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for key in written:
            values = by_id.get(key)
            if values:
                row = {"id": key, **_platform_values(tables, values)}
                groups.setdefault(tuple(sorted(values)), []).append(row)
        for columns, rows in groups.items():
            await update_by_key(conn, s, columns, rows)

    return write


def _platform_values(tables: PlatformTables, row: Mapping[str, Any]) -> dict[str, Any]:
    values = dict(row)
    if "status" in values:
        values["status"] = tables.status("streamings", values["status"])
    return values


async def settle_missing_external_ids(
    engine: AsyncEngine, tables: PlatformTables, owner: str, *, dry_run: bool
) -> int:
    """Rows with no uid: nothing to ask Stream, so ``error`` at once, in two statements (the
    platform row's status, our check). Returns how many (in a dry run: how many would be, given
    back unchanged)."""
    s = tables.streamings
    ours = owned(tables, owner).add_columns(CHECKS.c.streaming_id).where(missing_external_id(s))
    if dry_run:
        async with read_only(engine).connect() as conn:
            ids = list((await conn.scalars(ours)).all())
        if ids:
            await release_rows(engine, CHECKS, owner=owner, ids=ids)
        return len(ids)
    async with engine.begin() as conn:
        ids = list((await conn.scalars(ours.with_for_update(of=CHECKS))).all())
        if not ids:
            return 0
        await conn.execute(
            update(s)
            .where(s.c.id.in_(ids))
            .values(status=tables.status("streamings", StreamingStatus.ERROR.value))
        )
        await conn.execute(
            update(CHECKS)
            .where(CHECKS.c.streaming_id.in_(ids))
            .values(
                error_reason=NO_EXTERNAL_ID,
                checked_at=utcnow(),
                locked_until=None,
                locked_by=None,
            )
        )
    return len(ids)


async def release_uids(
    engine: AsyncEngine, tables: PlatformTables, owner: str, uids: Sequence[str]
) -> int:
    """Give back our rows of these uids unchanged; returns how many."""
    s = tables.streamings
    ours = owned(tables, owner).add_columns(CHECKS.c.streaming_id)
    stmt = (
        update(CHECKS)
        .where(CHECKS.c.streaming_id.in_(ours.where(s.c.external_id.in_(list(uids)))))
        .values(locked_until=None, locked_by=None)
    )
    async with engine.begin() as conn:
        return int((await conn.execute(stmt)).rowcount or 0)


async def record_dead_letters(engine: AsyncEngine, letters: Sequence[Mapping[str, Any]]) -> int:
    """Insert dead letters, skipping rows that already have an unreplayed one (a run that crashed
    between this and the row's write will fail the row again); returns how many were new."""
    if not letters:
        return 0
    ids = [str(letter["source_id"]) for letter in letters]
    async with engine.begin() as conn:
        existing = set(
            (
                await conn.scalars(
                    select(DeadLetter.source_id).where(
                        DeadLetter.source == DeadLetterSource.STREAMINGS.value,
                        DeadLetter.replayed_at.is_(None),
                        DeadLetter.source_id.in_(ids),
                    )
                )
            ).all()
        )
        fresh = [dict(letter) for letter in letters if letter["source_id"] not in existing]
        if fresh:
            await conn.execute(insert(DeadLetter), fresh)
    return len(fresh)
