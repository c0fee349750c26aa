"""The video queue's statements: lease every due row to one owner, read back the rows still ours
(by uid, oldest, longest unchecked), settle the rows that have no uid, give rows back unchanged,
and record dead letters once per row. Every statement is bulk: none is issued per row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.claims import lease_is_free, release_rows
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import DeadLetter, DeadLetterSource, Streaming, StreamingStatus
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos.reconcile import PROVIDER, LeasedRow

NO_EXTERNAL_ID = "no external id: nothing to ask Cloudflare Stream about"


def owned_by(owner: str) -> ColumnElement[bool]:
    # status/provider let the (status, provider, created_at) index narrow every look-up to the
    # queue, however large the table of settled videos grows.
    return and_(
        Streaming.locked_by == owner,
        Streaming.status == StreamingStatus.QUEUED.value,
        Streaming.provider == PROVIDER,
    )


def due(now: datetime) -> ColumnElement[bool]:
    return and_(
        Streaming.status == StreamingStatus.QUEUED.value,
        Streaming.provider == PROVIDER,
        Streaming.deleted_at.is_(None),
        lease_is_free(Streaming, now),
    )


def missing_external_id() -> ColumnElement[bool]:
    return or_(Streaming.external_id.is_(None), func.trim(Streaming.external_id) == "")


async def lease_due_rows(
    engine: AsyncEngine, *, owner: str, lease: timedelta, now: datetime | None = None
) -> int:
    """Lease every due row in one statement; returns how many. Nothing is read back: at 100,000
    rows the ids alone would be the largest thing this task holds."""
    now = now or utcnow()
    stmt = (
        update(Streaming)
        .where(due(now))
        .values(locked_until=now + lease, locked_by=owner)
        .execution_options(synchronize_session=False)
    )
    async with engine.begin() as conn:
        result = await conn.execute(stmt)
    return int(result.rowcount or 0)


async def count_owned(engine: AsyncEngine, owner: str) -> int:
    async with read_only(engine).connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(Streaming).where(owned_by(owner))
        )
    return int(count or 0)


async def oldest_owned(engine: AsyncEngine, owner: str) -> datetime | None:
    """When the oldest row still ours was created: where the listing has to start."""
    async with read_only(engine).connect() as conn:
        oldest: datetime | None = await conn.scalar(
            select(func.min(Streaming.created_at)).where(owned_by(owner))
        )
    return oldest


async def next_unseen_uids(engine: AsyncEngine, owner: str, limit: int) -> list[str]:
    """Distinct uids of rows still ours, never-checked first, then the longest unchecked."""
    stmt = (
        select(Streaming.external_id)
        .where(owned_by(owner), Streaming.external_id.is_not(None))
        .group_by(Streaming.external_id)
        .order_by(func.min(Streaming.checked_at).nulls_first(), Streaming.external_id)
        .limit(limit)
    )
    async with read_only(engine).connect() as conn:
        return [uid for uid in (await conn.scalars(stmt)).all() if uid]


async def owned_rows_of(engine: AsyncEngine, owner: str, uids: Sequence[str]) -> list[LeasedRow]:
    """Our rows that name any of ``uids`` (several rows may share one video)."""
    stmt = select(Streaming.id, Streaming.external_id, Streaming.attempts).where(
        owned_by(owner), Streaming.external_id.in_(list(uids))
    )
    async with read_only(engine).connect() as conn:
        return [
            LeasedRow(r.id, r.external_id, r.attempts) for r in (await conn.execute(stmt)).all()
        ]


async def settle_missing_external_ids(engine: AsyncEngine, owner: str, *, dry_run: bool) -> int:
    """Rows with no uid: nothing to ask Stream, so ``error`` at once, in one statement. Returns
    how many (in a dry run: how many would be, given back unchanged)."""
    where = and_(owned_by(owner), missing_external_id())
    if dry_run:
        async with read_only(engine).connect() as conn:
            ids = list((await conn.scalars(select(Streaming.id).where(where))).all())
        if ids:
            await release_rows(engine, Streaming, owner=owner, ids=ids)
        return len(ids)
    stmt = (
        update(Streaming)
        .where(where)
        .values(
            status=StreamingStatus.ERROR.value,
            error_reason=NO_EXTERNAL_ID,
            checked_at=utcnow(),
            locked_until=None,
            locked_by=None,
        )
        .execution_options(synchronize_session=False)
    )
    async with engine.begin() as conn:
        return int((await conn.execute(stmt)).rowcount or 0)


async def release_uids(engine: AsyncEngine, owner: str, uids: Sequence[str]) -> int:
    """Give back our rows of these uids unchanged; returns how many."""
    stmt = (
        update(Streaming)
        .where(owned_by(owner), Streaming.external_id.in_(list(uids)))
        .values(locked_until=None, locked_by=None)
        .execution_options(synchronize_session=False)
    )
    async with engine.begin() as conn:
        return int((await conn.execute(stmt)).rowcount or 0)


async def record_dead_letters(engine: AsyncEngine, letters: Sequence[Mapping[str, Any]]) -> int:
    """Insert dead letters, skipping rows that already have an unreplayed one (a run that crashed
    between this and the row's write will fail the row again); returns how many were new."""
    if not letters:
        return 0
    ids = [int(letter["source_id"]) for letter in letters]
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
