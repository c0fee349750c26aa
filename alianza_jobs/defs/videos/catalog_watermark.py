"""Where the catalog sync resumes: the watermark in ``sync_state`` (the newest Stream ``created``
whose page is committed, only ever moved forwards), and the oldest mirrored video still
processing, which pulls the listing back until it settles; and whether a sync would find
anything (its schedule's probe)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import StreamVideo, SyncState
from alianza_jobs.db.platform_tables import PlatformTables
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos.reconcile import PROVIDER

WATERMARK_NAME = "stream_catalog"
FINAL_STATES = ("ready", "error")


async def read_watermark(engine: AsyncEngine, name: str = WATERMARK_NAME) -> datetime | None:
    async with read_only(engine).connect() as conn:
        value: datetime | None = await conn.scalar(
            select(SyncState.watermark).where(SyncState.name == name)
        )
    return value


async def write_watermark(engine: AsyncEngine, value: datetime, name: str = WATERMARK_NAME) -> None:
    """Advance the watermark to ``value`` (never backwards: two runs at once cannot undo each
    other). Called only after the page it covers is committed."""
    now = utcnow()
    insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert
    stmt = insert(SyncState).values(name=name, watermark=value, created_at=now, updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"watermark": stmt.excluded.watermark, "updated_at": now},
        where=(SyncState.watermark.is_(None)) | (SyncState.watermark < stmt.excluded.watermark),
    )
    async with engine.begin() as conn:
        await conn.execute(stmt)


async def oldest_unsettled(engine: AsyncEngine, since: datetime) -> datetime | None:
    """Creation time of the oldest mirrored video still processing (created after ``since``)."""
    stmt = select(func.min(StreamVideo.stream_created)).where(
        StreamVideo.deleted_at.is_(None),
        StreamVideo.state.not_in(FINAL_STATES),
        StreamVideo.stream_created >= since,
    )
    async with read_only(engine).connect() as conn:
        value: datetime | None = await conn.scalar(stmt)
    return value


def count_catalog_changes(
    conn: Connection, tables: PlatformTables, *, now: datetime, lookback: timedelta, cap: int
) -> int:
    """What a sync would come for, counting no further than ``cap`` (the schedule's question, on
    a synchronous connection): platform uploads of the last ``lookback`` whose video the mirror
    does not have yet, and mirrored videos of that time still processing (each sync lists them
    again until they settle). Videos added to Stream outside the platform show only once
    something else brings a sync, or with a ``full_resync``."""
    s = tables.streamings
    since = now - lookback
    uploads = [s.c.provider == PROVIDER, s.c.external_id.is_not(None), s.c.created_at >= since]
    if "deleted_at" in s.c:
        uploads.append(s.c.deleted_at.is_(None))
    mirrored = select(StreamVideo.uid).where(StreamVideo.uid == s.c.external_id).exists()
    unmirrored = select(literal(1)).where(*uploads, ~mirrored).limit(cap).subquery()
    processing = (
        select(literal(1))
        .where(
            StreamVideo.deleted_at.is_(None),
            StreamVideo.state.not_in(FINAL_STATES),
            StreamVideo.stream_created >= since,
        )
        .limit(cap)
        .subquery()
    )
    new = int(conn.scalar(select(func.count()).select_from(unmirrored)) or 0)
    return new + int(conn.scalar(select(func.count()).select_from(processing)) or 0)
