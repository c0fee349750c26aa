"""``sync_stream_catalog``: mirrors Cloudflare Stream's catalog into ``stream_videos`` from a
watermark, one transaction per listing page and the watermark advanced only after each page is
committed, so a crash or a rerun leaves the mirror as if nothing had happened; see docs/videos.md."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import dagster as dg
from dagster import OpExecutionContext
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.http import ApiError
from alianza_jobs.clients.stream import MAX_PAGE_SIZE
from alianza_jobs.clients.stream import StreamVideo as ApiVideo
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos.catalog_mirror import PageResult, apply_page, mirror_values
from alianza_jobs.defs.videos.catalog_watermark import (
    count_catalog_changes,
    oldest_unsettled,
    read_watermark,
    write_watermark,
)
from alianza_jobs.logs import TaskLogger, get_logger
from alianza_jobs.platform.breakers import DatabaseBreakerStore
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.platform.schedules import Backlog
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import CloudflareStream, Database

# The probe counts no further: enough to say "there is work" and roughly how much.
BACKLOG_CAP = 1000
# As far back as a run lists unsettled videos again (CatalogSyncConfig.refresh_lookback_hours).
PROBE_LOOKBACK = timedelta(hours=72)


def catalog_changes(database: Database) -> Backlog:
    """The schedule's question: has the platform an upload the mirror lacks, or the mirror a
    video still processing? Otherwise a run would list Stream and find nothing new."""
    with database.probe() as (conn, tables):
        count = count_catalog_changes(
            conn, tables, now=utcnow(), lookback=PROBE_LOOKBACK, cap=BACKLOG_CAP
        )
    return Backlog(count, "new or unsettled videos" if count != 1 else "new or unsettled video")


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
    backlog=catalog_changes,
)

TICK = timedelta(microseconds=1)


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
# write_watermark is looked up here at call time, so a test can make it fail between two pages.
__all__ = [
    "TASK",
    "CatalogSyncConfig",
    "job",
    "mirror_stream_catalog",
    "write_watermark",
]
