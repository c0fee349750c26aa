"""One run of the video queue over the rows leased to it: settle the rows without a uid, reconcile
the rest against a listing of Stream's catalog page by page, then resolve what the listing did not
see by ``id``-filtered lookups or, failing those, one GET per video, within the run's API budgets.
Counters accumulate in ``counts``; the op turns them into its report."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import Counter
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.http import (
    ApiError,
    ClientRateLimitedError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.stream import StreamClient, StreamVideo
from alianza_jobs.db.claims import release_rows, write_rows
from alianza_jobs.db.platform_tables import PlatformTables
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos import queue_sql
from alianza_jobs.defs.videos.queue_config import VideoQueueConfig
from alianza_jobs.defs.videos.reconcile import (
    NOT_FOUND,
    Verdict,
    plan_write,
    verdict_for,
    verdict_for_error,
)
from alianza_jobs.logs import TaskLogger

# Stream uids are 32 lowercase hex characters; anything else cannot go into an `id` filter safely
# (one odd value could get the whole batch refused) and is asked about on its own.
STREAM_UID = re.compile(r"^[0-9a-f]{32}$")
# The listing always gets a couple of pages, however few rows are queued.
MIN_LISTING_PAGES = 2


@dataclass
class LookupResult:
    progress: int = 0
    """Rows settled or given back."""
    leftover: list[str] = field(default_factory=list)
    """Uids the lookup could not settle: ask about each on its own."""
    filter_works: bool = True
    """False when Stream refused or ignored the `id` filter: stop using it this run."""


@dataclass
class VideoQueueRun:
    engine: AsyncEngine
    tables: PlatformTables
    api: StreamClient
    owner: str
    config: VideoQueueConfig
    log: TaskLogger
    counts: Counter[str] = field(default_factory=Counter)
    unseen: int = 0
    gets_made: int = 0
    stop_reason: str | None = None
    fatal: ApiError | None = None
    listing_from: datetime | None = None

    # -- steps --------------------------------------------------------------------------------------

    async def settle_missing_external_ids(self) -> None:
        settled = await queue_sql.settle_missing_external_ids(
            self.engine, self.tables, self.owner, dry_run=self.config.dry_run
        )
        if settled:
            self.counts["errored"] += settled
            self.counts["no_external_id"] += settled
            self.log.warning("Rows without an external id marked error", rows=settled)

    async def count_unseen(self) -> int:
        return await queue_sql.count_owned(self.engine, self.tables, self.owner)

    def listing_page_budget(self, rows: int) -> int:
        if self.config.max_listing_pages is not None:
            return self.config.max_listing_pages
        per_call = self.config.lookup_batch_size or 1
        return max(MIN_LISTING_PAGES, math.ceil(rows / per_call))

    async def reconcile_listing(self) -> None:
        """Phase 2: read the catalog from the oldest leased row on, settling page by page."""
        oldest = await queue_sql.oldest_owned(self.engine, self.tables, self.owner)
        if oldest is None:
            return
        self.listing_from = oldest - timedelta(seconds=self.config.listing_margin_seconds)
        budget = self.listing_page_budget(self.unseen)
        calls_before = self.api.calls
        page: list[StreamVideo] = []
        pages = 0
        stop = "end of catalog"
        listing = cast(
            AsyncGenerator[StreamVideo, None],
            self.api.list_videos(
                after=self.listing_from, asc=True, page_size=self.config.page_size
            ),
        )
        try:
            async for video in listing:
                page.append(video)
                if len(page) < self.config.page_size:
                    continue
                pages += 1
                await self.settle_listing_page(page, pages)
                page = []
                if self.unseen <= 0:
                    stop = "every leased row seen"
                    break
                if self.api.calls - calls_before >= budget:
                    stop = "page budget spent"
                    break
            else:
                if page:
                    pages += 1
                    await self.settle_listing_page(page, pages)
        finally:
            await listing.aclose()
            self.counts["listing_calls"] += self.api.calls - calls_before
        self.log.info(
            "Listing reconciled",
            listed_from=self.listing_from.isoformat(),
            pages=pages,
            calls=self.api.calls - calls_before,
            page_budget=budget,
            stopped=stop,
            unseen=self.unseen,
        )

    async def settle_listing_page(self, page: Sequence[StreamVideo], number: int) -> None:
        verdicts: dict[str, Verdict] = {}
        nameless = 0
        for video in page:
            if video.uid:
                verdicts[video.uid] = verdict_for(video)
            else:
                nameless += 1
        if nameless:
            self.counts["malformed_listing_items"] += nameless
            self.log.warning(
                "Listing items without a uid ignored (they cannot be matched to a row)",
                page=number,
                items=nameless,
            )
        matched, labels = await self.settle(verdicts)
        self.unseen -= matched
        if matched:
            self.log.info(
                "Settled a page of the Stream listing",
                page=number,
                videos=len(page),
                rows=matched,
                **labels,
            )

    async def resolve_unseen(self) -> None:
        """Phase 3: rows the listing did not settle, by ``id`` lookups or per-video GETs."""
        lookups = self.config.lookup_batch_size > 0
        while self.stop_reason is None:
            batch = self.config.lookup_batch_size if lookups else self.config.get_concurrency * 16
            uids = await queue_sql.next_unseen_uids(self.engine, self.tables, self.owner, batch)
            if not uids:
                return
            progress = 0
            if lookups:
                listable = [uid for uid in uids if STREAM_UID.match(uid)]
                one_by_one = [uid for uid in uids if not STREAM_UID.match(uid)]
                if listable:
                    result = await self.lookup(listable)
                    progress += result.progress
                    one_by_one += result.leftover
                    lookups = result.filter_works
                if one_by_one and self.stop_reason is None:
                    progress += await self.get_each(one_by_one)
            else:
                progress += await self.get_each(uids)
            if self.fatal is not None:
                raise self.fatal
            if progress == 0 and self.stop_reason is None:
                # Every row of these uids is someone else's now (lease lost): never spin.
                self.log.warning("No progress on unseen rows; leaving them", uids=len(uids))
                return

    async def lookup(self, uids: list[str]) -> LookupResult:
        """One ``id``-filtered listing for up to ``lookup_batch_size`` uids."""
        calls_before = self.api.calls
        try:
            videos = await self.api.find_videos(uids)
        except FatalApiError:
            raise
        except RetryableApiError as err:
            self.note_retryable(err, uids=len(uids))
            return LookupResult(progress=await self.defer(uids))
        except PermanentApiError as err:
            self.log.warning(
                "Stream refused the id lookup; asking about each video on its own instead",
                error=str(err),
                uids=len(uids),
            )
            return LookupResult(leftover=uids, filter_works=False)
        finally:
            self.counts["lookup_calls"] += self.api.calls - calls_before
        by_uid = {video.uid: video for video in videos if video.uid}
        if not set(by_uid) <= set(uids):
            self.log.warning(
                "Stream ignored the `id` filter (it answered with other videos); asking about "
                "each video on its own instead",
                uids=len(uids),
                answered=len(videos),
            )
            return LookupResult(leftover=uids, filter_works=False)
        verdicts = {uid: verdict_for(by_uid[uid]) for uid in uids if uid in by_uid}
        absent = [uid for uid in uids if uid not in by_uid]
        nameless = len(videos) - len(by_uid)
        if nameless:
            # An item we could not read may be one of the absent uids: absence proves nothing.
            self.counts["malformed_listing_items"] += nameless
            matched, _ = await self.settle(verdicts)
            return LookupResult(progress=matched, leftover=absent)
        verdicts |= dict.fromkeys(absent, NOT_FOUND)
        matched, labels = await self.settle(verdicts)
        self.log.info("Settled unseen videos by id", uids=len(uids), rows=matched, **labels)
        return LookupResult(progress=matched)

    async def get_each(self, uids: Sequence[str]) -> int:
        """One GET per uid, ``get_concurrency`` at a time, then one bulk write for the batch."""
        semaphore = asyncio.Semaphore(self.config.get_concurrency)
        calls_before = self.api.calls

        async def one(uid: str) -> Verdict | None:
            async with semaphore:
                if self.stop_reason is not None:
                    return None
                if self.gets_made >= self.config.max_gets:
                    self.stop(f"GET budget of {self.config.max_gets} spent")
                    return None
                self.gets_made += 1
                try:
                    return verdict_for(await self.api.get_video(uid))
                except FatalApiError as err:
                    self.fatal = self.fatal or err
                    self.stop(f"fatal error: {err}")
                    return None
                except ApiError as err:
                    verdict = verdict_for_error(err)
                    if verdict is None:
                        self.note_retryable(err, uids=1)
                    return verdict

        try:
            results = await asyncio.gather(*(one(uid) for uid in uids))
        finally:
            self.counts["get_calls"] += self.api.calls - calls_before
        verdicts = {uid: v for uid, v in zip(uids, results, strict=True) if v is not None}
        left = [uid for uid, v in zip(uids, results, strict=True) if v is None]
        matched, labels = await self.settle(verdicts)
        deferred = await self.defer(left)
        if verdicts:
            self.log.info(
                "Settled videos asked about one by one",
                videos=len(verdicts),
                rows=matched,
                **labels,
            )
        return matched + deferred

    # -- shared mechanics ---------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.log.warning("Leaving the remaining rows for the next tick", reason=reason)

    def note_retryable(self, err: ApiError, *, uids: int) -> None:
        self.log.warning("Stream call failed; rows stay queued", error=str(err), uids=uids)
        if isinstance(err, ClientRateLimitedError) or err.status == 429:
            # The client already waited what it may: more calls now only dig the hole deeper.
            self.stop(f"rate limited: {err}")

    async def settle(self, verdicts: Mapping[str, Verdict]) -> tuple[int, dict[str, int]]:
        """Apply verdicts to every row of ours with those uids, in one bulk write.

        Returns the rows matched and how many got each outcome."""
        if not verdicts:
            return 0, {}
        rows = await queue_sql.owned_rows_of(self.engine, self.tables, self.owner, list(verdicts))
        if not rows:
            return 0, {}
        plan = plan_write(rows, verdicts, now=utcnow(), max_attempts=self.config.max_attempts)
        if self.config.dry_run:
            await release_rows(self.engine, queue_sql.CHECKS, owner=self.owner, ids=plan.labels)
            written = set(plan.labels)
        else:
            await queue_sql.record_dead_letters(self.engine, plan.dead_letters)
            ours = [
                {k: v for k, v in change.items() if k not in queue_sql.PLATFORM_COLUMNS}
                for change in plan.changes
            ]
            written = set(
                await write_rows(
                    self.engine,
                    queue_sql.CHECKS,
                    owner=self.owner,
                    changes=ours,
                    also=queue_sql.write_platform(self.tables, plan.changes),
                )
            )
        labels = Counter(label for row_id, label in plan.labels.items() if row_id in written)
        lost = len(plan.labels) - len(written)
        if lost:
            self.counts["lease_lost"] += lost
        for row, reason, dead in plan.failures:
            if row.id in written:
                self.log.child(video_id=row.id, external_id=row.external_id).log(
                    logging.ERROR if dead else logging.WARNING,
                    "Video check failed; dead-lettered" if dead else "Video check failed",
                    error=reason,
                    attempts=row.attempts + 1,
                    max_attempts=self.config.max_attempts,
                )
        self.counts.update(labels)
        # `errored` counts every row now in status error: not found and dead-lettered ones too.
        self.counts["errored"] += labels.get("not_found", 0)
        self.counts["failed"] += labels.get("dead_lettered", 0)
        self.counts["errored"] += labels.get("dead_lettered", 0)
        return len(rows), dict(labels)

    async def defer(self, uids: Sequence[str]) -> int:
        """Give back the rows of these uids unchanged: they are asked about next tick."""
        if not uids:
            return 0
        released = await queue_sql.release_uids(self.engine, self.tables, self.owner, uids)
        self.counts["deferred"] += released
        return released
