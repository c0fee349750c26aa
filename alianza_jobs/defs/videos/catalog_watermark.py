"""Where the catalog sync resumes: the watermark in ``sync_state`` (the newest Stream ``created``
whose page is committed, only ever moved forwards), and the oldest mirrored video still
processing, which pulls the listing back until it settles."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import StreamVideo, SyncState
from alianza_jobs.db.types import utcnow

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
