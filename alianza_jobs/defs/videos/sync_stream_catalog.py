"""``sync_stream_catalog``: the seed's "data synchronization", made safe to crash and to rerun.

The seed fetched everything since its last sync, upserted row by row, then stamped "now" as the
new sync time: a crash in the loop left a half-written mirror and, worse, stamping wall-clock time
instead of the newest item seen skipped whatever Stream created while the loop ran.

Here the mirror (``stream_videos``) follows Stream's catalog from a watermark,
``sync_state(name='stream_catalog').watermark``: the newest Stream ``created`` whose page is
committed. Each run:

1. lists Stream ascending by creation from ``min(watermark, oldest non-final mirrored video's
   created) - overlap``. The non-final term brings videos still processing back into every listing
   until they settle (Stream has no "modified since" filter), and only those of the last
   ``refresh_lookback_hours`` (older ones are abandoned uploads, and would drag every listing
   back); the overlap absorbs clock skew and videos that become visible a little late;
2. per page, in ONE transaction: reads the page's existing mirror rows, upserts only the new and
   changed ones (``INSERT ... ON CONFLICT (uid) DO UPDATE``, bulk, on Postgres and SQLite), and
   soft-deletes mirrored videos that the listing proves gone (created inside the page's span, not
   in it: Stream's listing leaves out deleted videos);
3. after that commit, in a separate step, advances the watermark to the page's newest ``created``
   (never backwards).

A crash between 2 and 3 leaves committed rows and an older watermark: the rerun lists those videos
again, finds them unchanged and moves on, so the mirror ends up exactly as if nothing happened.
Unchanged rows are not written at all (their ``updated_at`` stays), so a rerun changes nothing but
the watermark row. Items whose JSON is malformed are mirrored as far as they can be read; one that
cannot be keyed (no uid) or has no state is counted ``failed``, logged, and skipped.

``full_resync`` lists the whole catalog, which also notices deletions of old, settled videos (a
deletion outside the listed window is otherwise not seen).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import dagster as dg
from dagster import OpExecutionContext
from pydantic import Field
from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.clients.http import ApiError
from alianza_jobs.clients.stream import MAX_PAGE_SIZE
from alianza_jobs.clients.stream import StreamVideo as ApiVideo
from alianza_jobs.db.breaker_store import DatabaseBreakerStore
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import STREAM_UID_MAX, StreamVideo, SyncState
from alianza_jobs.db.types import utcnow
from alianza_jobs.logs import TaskLogger, get_logger
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import CloudflareStream, Database

TASK = TaskSpec(
    name="sync_stream_catalog",
    description=(
        "Mirrors Cloudflare Stream's catalog into stream_videos from a watermark: bulk upserts "
        "per page, the watermark advanced only after each page is committed."
    ),
    cron="*/15 * * * *",
    timeout=timedelta(minutes=10),
    retry=Retry(max_retries=3, delay=timedelta(seconds=30)),
    assets=["stream_videos"],
)

WATERMARK_NAME = "stream_catalog"
FINAL_STATES = ("ready", "error")
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
TICK = timedelta(microseconds=1)
REASON_CODE_MAX = 64


class CatalogSyncConfig(dg.Config):
    page_size: int = Field(
        default=MAX_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description="Videos per page: each page is one transaction, then a watermark step.",
    )
    overlap_seconds: float = Field(
        default=300.0,
        ge=0.0,
        description="How far before the watermark each listing starts (clock skew, late videos).",
    )
    refresh_lookback_hours: float = Field(
        default=72.0,
        ge=0.0,
        description=(
            "Mirrored videos not yet ready/error and created within this many hours are listed "
            "again on every run until they settle."
        ),
    )
    full_resync: bool = Field(
        default=False,
        description="List the whole catalog (also notices deletions of old videos).",
    )
    dry_run: bool = Field(default=False, description="List and count; write nothing.")


# -- from Stream's video to a mirror row ------------------------------------------------------------


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


# -- the watermark ----------------------------------------------------------------------------------


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


# -- one page ---------------------------------------------------------------------------------------


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


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class SyncCounts:
    listed: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    pages: int = 0

    def add(self, page: PageResult) -> None:
        self.inserted += page.inserted
        self.updated += page.updated
        self.unchanged += page.unchanged
        self.deleted += page.deleted

    def as_dict(self) -> dict[str, int]:
        return {
            "listed": self.listed,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "failed": self.failed,
            "pages": self.pages,
            # processed / succeeded / failed, as every task reports them
            "processed": self.listed,
            "succeeded": self.listed - self.failed,
        }


async def listing_start(
    engine: AsyncEngine, config: CatalogSyncConfig, watermark: datetime | None
) -> datetime | None:
    """Where this run's listing starts (exclusive); None lists the whole catalog."""
    if config.full_resync or watermark is None:
        return None
    start = watermark
    lookback = utcnow() - timedelta(hours=config.refresh_lookback_hours)
    unsettled = await oldest_unsettled(engine, since=lookback)
    if unsettled is not None and unsettled < start:
        start = unsettled
    # `after` is exclusive: one microsecond more brings the oldest unsettled video itself back.
    return start - timedelta(seconds=config.overlap_seconds) - TICK


async def sync_pages(
    engine: AsyncEngine,
    listing: AsyncGenerator[ApiVideo, None],
    *,
    start: datetime | None,
    config: CatalogSyncConfig,
    counts: SyncCounts,
    log: TaskLogger,
) -> datetime | None:
    """Mirror the listing page by page; returns the newest ``created`` committed."""
    newest: datetime | None = None
    covered = start
    page: list[ApiVideo] = []

    async def flush(last: bool) -> None:
        nonlocal covered, newest
        counts.pages += 1 if page else 0
        rows: list[dict[str, Any]] = []
        for video in page:
            values = mirror_values(video)
            if isinstance(values, str):
                counts.failed += 1
                log.child(external_id=video.uid or None).error(
                    "Stream video cannot be mirrored; skipped", reason=values
                )
                continue
            if video.parse_error:
                log.child(external_id=video.uid).warning(
                    "Mirroring a video Stream described oddly", problem=video.parse_error
                )
            rows.append(values)
        created = [v.created for v in page if v.created is not None]
        edge = max(created) if created else None
        # The last page covers everything after it; a full page only up to (not including) its
        # newest timestamp, which the next page may share.
        covers_before = None if last else edge
        result = await apply_page(
            engine,
            rows,
            seen=[v.uid for v in page if v.uid],
            covers_after=covered,
            covers_before=covers_before,
            dry_run=config.dry_run,
        )
        counts.add(result)
        if edge is not None and not config.dry_run:
            # After the commit, on its own: a crash between the two only repeats work.
            await write_watermark(engine, edge)
        if edge is not None:
            newest = edge if newest is None else max(newest, edge)
            covered = edge
        log.info(
            "Mirrored a page of Stream's catalog",
            page=counts.pages,
            videos=len(page),
            inserted=result.inserted,
            updated=result.updated,
            unchanged=result.unchanged,
            deleted=result.deleted,
            watermark=edge.isoformat() if edge else None,
        )

    async for video in listing:
        counts.listed += 1
        page.append(video)
        if len(page) >= config.page_size:
            await flush(last=False)
            page = []
    await flush(last=True)
    return newest


@TASK.op
async def mirror_stream_catalog(
    context: OpExecutionContext,
    config: CatalogSyncConfig,
    database: Database,
    stream: CloudflareStream,
) -> TaskReport:
    log = get_logger(dry_run=config.dry_run, full_resync=config.full_resync)
    started = time.perf_counter()
    counts = SyncCounts()
    async with (
        database.engine() as engine,
        stream.client(breaker_store=DatabaseBreakerStore(engine)) as api,
    ):
        before = await read_watermark(engine)
        start = await listing_start(engine, config, before)
        log.info(
            "Syncing Stream's catalog",
            watermark=before.isoformat() if before else None,
            listing_from=start.isoformat() if start else "the beginning",
        )
        listing = cast(
            AsyncGenerator[ApiVideo, None],
            api.list_videos(after=start, asc=True, page_size=config.page_size),
        )
        try:
            await sync_pages(engine, listing, start=start, config=config, counts=counts, log=log)
        except ApiError as err:
            log.error("Stopping: Stream cannot be listed now", err, **counts.as_dict())
            raise dagster_failure(
                err, task=TASK.name, counts={**counts.as_dict(), "api_calls": api.calls}
            ) from None
        finally:
            await listing.aclose()
        after = await read_watermark(engine)
        report = TaskReport(
            counts={**counts.as_dict(), "api_calls": api.calls},
            metadata={
                "watermark_before": before.isoformat() if before else None,
                "watermark": after.isoformat() if after else None,
                "listing_from": start.isoformat() if start else None,
                "dry_run": config.dry_run,
                "elapsed_s": round(time.perf_counter() - started, 3),
                "breaker": api.breaker_snapshot(),
            },
        )
    return report  # the task wrapper logs the counters in its closing line


job = TASK.job(mirror_stream_catalog)

__all__ = [
    "TASK",
    "WATERMARK_NAME",
    "CatalogSyncConfig",
    "apply_page",
    "job",
    "mirror_stream_catalog",
    "mirror_values",
    "read_watermark",
    "write_watermark",
]
