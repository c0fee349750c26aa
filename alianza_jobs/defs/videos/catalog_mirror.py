"""One page of Stream's catalog into the ``stream_videos`` mirror: the values kept of each video,
and the page's single transaction that upserts the new and changed videos and soft-deletes the
mirrored ones the page proves gone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.clients.stream import StreamVideo as ApiVideo
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import STREAM_UID_MAX, StreamVideo
from alianza_jobs.db.types import utcnow

# What the mirror keeps of each video; a row whose values all match is left alone.
MIRRORED = (
    "state",
    "pct_complete",
    "duration",
    "ready_to_stream",
    "error_reason_code",
    "error_reason_text",
    "stream_created",
    "stream_modified",
    "meta",
)
STATE_MAX = 32
REASON_CODE_MAX = 64


def mirror_values(video: ApiVideo) -> dict[str, Any] | str:
    """The ``stream_videos`` values for a video, or why it cannot be mirrored.

    Lenient with what the client flagged as malformed but we can still store (an unknown state, a
    duration that is not a number, an unreadable timestamp): the mirror should show Stream's
    catalog, including what we do not understand yet.
    """
    if not video.uid:
        return "no uid"
    if len(video.uid) > STREAM_UID_MAX:
        return f"uid longer than {STREAM_UID_MAX} characters"
    if not video.state:
        return "no state"
    if len(video.state) > STATE_MAX:
        return f"state longer than {STATE_MAX} characters"
    code = video.error_reason_code
    return {
        "uid": video.uid,
        "state": video.state,
        "pct_complete": video.pct_complete,
        "duration": video.duration,
        "ready_to_stream": video.ready_to_stream,
        "error_reason_code": code[:REASON_CODE_MAX] if code else None,
        "error_reason_text": video.error_reason_text,
        "stream_created": video.created,
        "stream_modified": video.modified,
        "meta": video.meta or None,
    }


@dataclass
class PageResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


def _same(existing: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return existing["deleted_at"] is None and all(existing[c] == values[c] for c in MIRRORED)


def _gone(
    seen: Sequence[str], after: datetime | None, before: datetime | None
) -> ColumnElement[bool]:
    """Mirrored, not deleted, created strictly inside (after, before), and not in this page."""
    clauses: list[ColumnElement[bool]] = [
        StreamVideo.deleted_at.is_(None),
        StreamVideo.stream_created.is_not(None),
    ]
    if after is not None:
        clauses.append(StreamVideo.stream_created > after)
    if before is not None:
        clauses.append(StreamVideo.stream_created < before)
    if seen:
        clauses.append(StreamVideo.uid.not_in(list(seen)))
    return and_(*clauses)


async def apply_page(
    engine: AsyncEngine,
    rows: Sequence[Mapping[str, Any]],
    *,
    seen: Sequence[str],
    covers_after: datetime | None,
    covers_before: datetime | None,
    dry_run: bool = False,
) -> PageResult:
    """Upsert a page's new and changed videos and soft-delete the ones it proves gone, in one
    transaction. The page covers creation times in ``(covers_after, covers_before)``: every
    video Stream has there is in ``seen``."""
    result = PageResult()
    uids = [row["uid"] for row in rows]
    columns = [
        StreamVideo.uid,
        StreamVideo.deleted_at,
        *(getattr(StreamVideo, c) for c in MIRRORED),
    ]
    now = utcnow()
    async with (read_only(engine) if dry_run else engine).begin() as conn:
        existing: dict[str, Mapping[str, Any]] = {
            r.uid: dict(r._mapping)
            for r in (await conn.execute(select(*columns).where(StreamVideo.uid.in_(uids)))).all()
        }
        changed: list[dict[str, Any]] = []
        for row in rows:
            before = existing.get(row["uid"])
            if before is None:
                result.inserted += 1
            elif _same(before, row):
                result.unchanged += 1
                continue
            else:
                result.updated += 1
            changed.append({**row, "deleted_at": None, "created_at": now, "updated_at": now})
        gone = _gone(seen, covers_after, covers_before)
        if dry_run:
            count = await conn.scalar(select(func.count()).select_from(StreamVideo).where(gone))
            result.deleted = int(count or 0)
            return result
        if changed:
            await _upsert(conn, changed, now)
        deleted = await conn.execute(
            update(StreamVideo)
            .where(gone)
            .values(deleted_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        result.deleted = int(deleted.rowcount or 0)
    return result


async def _upsert(conn: AsyncConnection, rows: list[dict[str, Any]], now: datetime) -> None:
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    stmt = insert(StreamVideo)
    stmt = stmt.on_conflict_do_update(
        index_elements=["uid"],
        set_={
            **{c: stmt.excluded[c] for c in MIRRORED},
            "deleted_at": None,
            "updated_at": now,
        },
    )
    # One executemany: psycopg pipelines it, sqlite3 loops in C.
    await conn.execute(stmt, rows)
