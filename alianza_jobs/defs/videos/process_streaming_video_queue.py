"""``process_streaming_video_queue``: the seed's ``processStreamingVideoQueue``, reconciled in bulk.

The seed made one ``GET /stream/{uid}`` per queued row on every tick: 10,000 queued videos cost
10,000 calls, eight times Cloudflare's budget of 1,200 requests per 5 minutes. Here a run costs about
one call per thousand rows:

1. **Lease** every due row (``status='queued'``, provider ``cloudflare``, not soft-deleted, lease free)
   with one ``UPDATE`` stamping ``locked_by``/``locked_until``, so a concurrent run finds nothing to
   do. Nothing is loaded into memory: from here on "ours" means ``locked_by = owner`` in the
   database, and a row leaves that set as soon as it is written or given back. Rows without an
   ``external_id`` become ``error`` ("no external id") in one more statement, with no API call.
2. **List** Stream's catalog from the oldest leased row's ``created_at`` minus a margin, ascending,
   over all states (one listing tells every video's state). Per page of up to 1,000 videos, one
   ``SELECT ... external_id IN (...)`` finds our rows, and one bulk write (one transaction) settles
   them: ``ready`` (+ ``duration``), ``error`` (+ ``error_reason``), or still processing; every row
   seen gets ``checked_at``. The listing stops early once every leased row has been seen, or after
   a page budget (see below).
3. **Resolve what the listing did not settle** (the video was deleted in Stream, or created before
   the window): the list endpoint filtered by ``id`` (up to 100 uids per call, Cloudflare's
   documented ``id`` filter, a comma-separated list) tells each one's state, and a uid absent from
   the answer is a video Stream no longer knows: ``error``. Uids that cannot go into such a filter,
   or all of them when the filter turns out to be unsupported (the answer holds videos we did not
   ask for), get one ``GET`` each under bounded concurrency and the client's rate limiter; a 404 is
   ``error``. Either way the writes are bulk, per batch.

Why the ``id`` lookup, a refinement of "one GET per unseen row": unseen rows are mostly deleted
videos. At 3% deleted, one GET each is 300 calls for 10,000 rows, on its own more than the 2% (200
calls) this job is allowed; the lookup settles them in 3. Set ``lookup_batch_size=0`` to get the
per-video GETs back. The listing's page budget (default: as many pages as the lookups for the same
rows would cost) keeps one ancient queued row from dragging the listing through months of
catalog: past the budget the remaining rows go to the lookups, so a run never costs much more than
twice the cheaper of the two strategies.

Per item: unknown states and ``pendingupload``/``downloading``/``queued``/``inprogress`` leave the row
queued; ``duration`` -1, non-numeric or non-finite is stored as null; ``error_reason`` is Stream's
reason code and text (either spelling). A malformed item (no state) or another permanent error
fails that row only: ``attempts`` += 1, and at ``max_attempts`` the row becomes ``error`` with a
``dead_letters`` row (written first, and never twice for one row, so a crash in between costs
nothing). A retryable error (after the client's own retries) leaves the row queued, untouched, for
the next tick. Rows sharing one ``external_id`` are all settled from the same video.

Failing the task: a fatal API error (401/403, quota, circuit open) or a listing that fails after
the client's retries. What was settled stays written; every row still leased is given back on the
way out (also when the task's timeout cancels the op); the ``Failure`` carries the counters.
Memory stays flat in the number of rows: at most one page of videos and its rows are held at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import dagster as dg
from dagster import Backoff, Jitter, OpExecutionContext
from pydantic import Field
from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.http import (
    ApiError,
    ClientRateLimitedError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.stream import MAX_PAGE_SIZE, StreamClient, StreamVideo
from alianza_jobs.db.breaker_store import DatabaseBreakerStore
from alianza_jobs.db.claims import lease_is_free, release_held, release_rows, write_rows
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import DeadLetter, DeadLetterSource, Streaming, StreamingStatus
from alianza_jobs.db.types import utcnow
from alianza_jobs.logs import TaskLogger, get_logger
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import CloudflareStream, Database

TASK = TaskSpec(
    name="process_streaming_video_queue",
    description=(
        "Settles queued Cloudflare Stream uploads (streamings): ready with duration, error with "
        "reason, or still processing, from bulk listings of Stream's catalog instead of one GET "
        "per video."
    ),
    cron="*/5 * * * *",
    env_crons={"dev": "*/10 * * * *", "uat": "*/15 * * * *"},
    timeout=timedelta(minutes=2),
    retry=Retry(
        max_retries=3,
        delay=timedelta(seconds=30),
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    ),
    assets=["streamings"],
)

PROVIDER = "cloudflare"
NO_EXTERNAL_ID = "no external id: nothing to ask Cloudflare Stream about"
NOT_FOUND_REASON = "not found in Cloudflare Stream (the video was deleted or never existed)"
# Stream uids are 32 lowercase hex characters; anything else cannot go into an `id` filter safely
# (one odd value could get the whole batch refused) and is asked about on its own.
STREAM_UID = re.compile(r"^[0-9a-f]{32}$")
# The listing always gets a couple of pages, however few rows are queued.
MIN_LISTING_PAGES = 2

Outcome = Literal["ready", "error", "processing", "failed"]


class VideoQueueConfig(dg.Config):
    page_size: int = Field(
        default=MAX_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description="Videos per listing page; each page is settled with one bulk write.",
    )
    lookup_batch_size: int = Field(
        default=100,
        ge=0,
        le=MAX_PAGE_SIZE,
        description=(
            "Uids per `id`-filtered listing call for rows the listing did not settle; 0 asks "
            "about each such video with its own GET instead."
        ),
    )
    get_concurrency: int = Field(
        default=8, ge=1, le=64, description="Per-video GETs in flight at once."
    )
    max_gets: int = Field(
        default=500,
        ge=0,
        description=(
            "Per-video GETs one run may make (Stream allows 1,200 requests per 5 minutes per "
            "token, shared with sync_stream_catalog); the rest waits for the next tick."
        ),
    )
    max_listing_pages: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Listing pages one run may read before the remaining rows go to the id lookups. "
            "Default: what the lookups for the same rows would cost (at least 2)."
        ),
    )
    lease_seconds: float = Field(
        default=180.0,
        ge=30.0,
        description=(
            "How long the rows stay ours. Longer than the 2-minute timeout, so a slow but "
            "healthy run keeps them; short enough that rows of a killed run return by the next "
            "tick."
        ),
    )
    listing_margin_seconds: float = Field(
        default=3600.0,
        ge=0.0,
        description=(
            "The listing starts this long before the oldest leased row was created: the video is "
            "created in Stream before its row, and the two clocks differ."
        ),
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        description="Permanent failures of one row before it becomes `error` and a dead letter.",
    )
    dry_run: bool = Field(
        default=False,
        description=(
            "Ask Stream and count what would change, but write nothing (rows are leased and "
            "given back unchanged)."
        ),
    )


# -- what one video means for its rows --------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What Stream's answer means for the rows of one uid."""

    outcome: Outcome
    duration: float | None = None
    reason: str | None = None
    not_found: bool = False


NOT_FOUND = Verdict("error", reason=NOT_FOUND_REASON, not_found=True)


def verdict_for(video: StreamVideo) -> Verdict:
    """The queue's reading of one video. Lenient where the queue can be: the client flags an
    unknown state or a non-numeric duration as a parse error, but neither stops us from knowing
    what to do with the row (leave it queued; store no duration). Only a video without a state is
    malformed for our purposes."""
    state = video.state
    if not state:
        return Verdict("failed", reason=f"malformed video: {video.parse_error or 'no state'}")
    if state == "ready":
        duration = video.duration
        if duration is not None and not math.isfinite(duration):
            duration = None
        return Verdict("ready", duration=duration)
    if state == "error":
        return Verdict(
            "error", reason=video.error_reason or "Stream reported an error without a reason"
        )
    # pendingupload, downloading, queued, inprogress, live-inprogress, or a state new to us.
    return Verdict("processing")


def verdict_for_error(error: ApiError) -> Verdict | None:
    """A per-video GET that failed: a verdict for the row, or None to leave it for a later tick."""
    if isinstance(error, PermanentApiError):
        if error.code == "not_found":
            return NOT_FOUND
        return Verdict("failed", reason=str(error))
    return None


@dataclass(frozen=True)
class LeasedRow:
    id: int
    external_id: str
    attempts: int


@dataclass
class PlannedWrite:
    """The bulk write for one batch: row changes, dead letters, and the outcome of each row."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)
    failures: list[tuple[LeasedRow, str, bool]] = field(default_factory=list)


def plan_write(
    rows: Sequence[LeasedRow],
    verdicts: Mapping[str, Verdict],
    *,
    now: datetime,
    max_attempts: int,
) -> PlannedWrite:
    """Row changes for ``write_rows`` (pure, so the rules are testable without a database)."""
    plan = PlannedWrite()
    for row in rows:
        verdict = verdicts[row.external_id]
        change: dict[str, Any] = {"id": row.id, "checked_at": now}
        if verdict.outcome == "ready":
            change |= {
                "status": StreamingStatus.READY.value,
                "duration": verdict.duration,
                "error_reason": None,
            }
            label = "ready"
        elif verdict.outcome == "error":
            change |= {"status": StreamingStatus.ERROR.value, "error_reason": verdict.reason}
            label = "not_found" if verdict.not_found else "errored"
        elif verdict.outcome == "processing":
            label = "still_processing"
        else:
            attempts = row.attempts + 1
            change["attempts"] = attempts
            reason = verdict.reason or "unknown failure"
            dead = attempts >= max_attempts
            if dead:
                change |= {
                    "status": StreamingStatus.ERROR.value,
                    "error_reason": f"gave up after {attempts} failed attempts: {reason}"[:2000],
                }
                plan.dead_letters.append(
                    {
                        "source": DeadLetterSource.STREAMINGS.value,
                        "source_id": row.id,
                        "payload": {
                            "streaming_id": row.id,
                            "external_id": row.external_id,
                            "provider": PROVIDER,
                            "attempts": attempts,
                        },
                        "error": reason[:2000],
                        "failed_at": now,
                    }
                )
            label = "dead_lettered" if dead else "failed"
            plan.failures.append((row, reason, dead))
        plan.changes.append(change)
        plan.labels[row.id] = label
    return plan


# -- database steps ---------------------------------------------------------------------------------


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


# -- the Stream `id` lookup -------------------------------------------------------------------------


async def lookup_videos(api: StreamClient, uids: Sequence[str]) -> list[StreamVideo]:
    """Those of the videos Stream still has (``GET .../stream?id=uid1,uid2,...``), one call."""
    return await api.find_videos(uids)


# -- one run ----------------------------------------------------------------------------------------


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
        """Rows with no uid: nothing to ask Stream, so ``error`` at once, in one statement."""
        now = utcnow()
        where = and_(owned_by(self.owner), missing_external_id())
        if self.config.dry_run:
            async with read_only(self.engine).connect() as conn:
                ids = list((await conn.scalars(select(Streaming.id).where(where))).all())
            if ids:
                await release_rows(self.engine, Streaming, owner=self.owner, ids=ids)
            settled = len(ids)
        else:
            stmt = (
                update(Streaming)
                .where(where)
                .values(
                    status=StreamingStatus.ERROR.value,
                    error_reason=NO_EXTERNAL_ID,
                    checked_at=now,
                    locked_until=None,
                    locked_by=None,
                )
                .execution_options(synchronize_session=False)
            )
            async with self.engine.begin() as conn:
                settled = int((await conn.execute(stmt)).rowcount or 0)
        if settled:
            self.counts["errored"] += settled
            self.counts["no_external_id"] += settled
            self.log.warning("Rows without an external id marked error", rows=settled)

    async def count_unseen(self) -> int:
        async with read_only(self.engine).connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(Streaming).where(owned_by(self.owner))
            )
        return int(count or 0)

    async def oldest_created(self) -> datetime | None:
        async with read_only(self.engine).connect() as conn:
            oldest: datetime | None = await conn.scalar(
                select(func.min(Streaming.created_at)).where(owned_by(self.owner))
            )
        return oldest

    def listing_page_budget(self, rows: int) -> int:
        if self.config.max_listing_pages is not None:
            return self.config.max_listing_pages
        per_call = self.config.lookup_batch_size or 1
        return max(MIN_LISTING_PAGES, math.ceil(rows / per_call))

    async def reconcile_listing(self) -> None:
        """Phase 2: read the catalog from the oldest leased row on, settling page by page."""
        oldest = await self.oldest_created()
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
            uids = await self.next_unseen(batch)
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

    async def next_unseen(self, limit: int) -> list[str]:
        """Distinct uids of rows still ours, never-checked first, then the longest unchecked."""
        stmt = (
            select(Streaming.external_id)
            .where(owned_by(self.owner), Streaming.external_id.is_not(None))
            .group_by(Streaming.external_id)
            .order_by(func.min(Streaming.checked_at).nulls_first(), Streaming.external_id)
            .limit(limit)
        )
        async with read_only(self.engine).connect() as conn:
            return [uid for uid in (await conn.scalars(stmt)).all() if uid]

    async def lookup(self, uids: list[str]) -> LookupResult:
        """One ``id``-filtered listing for up to ``lookup_batch_size`` uids."""
        calls_before = self.api.calls
        try:
            videos = await lookup_videos(self.api, uids)
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
        stmt = select(Streaming.id, Streaming.external_id, Streaming.attempts).where(
            owned_by(self.owner), Streaming.external_id.in_(list(verdicts))
        )
        async with read_only(self.engine).connect() as conn:
            rows = [
                LeasedRow(r.id, r.external_id, r.attempts) for r in (await conn.execute(stmt)).all()
            ]
        if not rows:
            return 0, {}
        plan = plan_write(rows, verdicts, now=utcnow(), max_attempts=self.config.max_attempts)
        if self.config.dry_run:
            await release_rows(self.engine, Streaming, owner=self.owner, ids=plan.labels)
            written = set(plan.labels)
        else:
            await record_dead_letters(self.engine, plan.dead_letters)
            written = set(
                await write_rows(self.engine, Streaming, owner=self.owner, changes=plan.changes)
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
        stmt = (
            update(Streaming)
            .where(owned_by(self.owner), Streaming.external_id.in_(list(uids)))
            .values(locked_until=None, locked_by=None)
            .execution_options(synchronize_session=False)
        )
        async with self.engine.begin() as conn:
            released = int((await conn.execute(stmt)).rowcount or 0)
        self.counts["deferred"] += released
        return released


# processed = succeeded + failed + deferred + lease_lost; succeeded = ready + still_processing +
# errored rows other than dead-lettered ones; errored includes not_found, no_external_id and
# dead_lettered; failed includes dead_lettered. "errored", not "error": the task wrapper passes the
# counters as keyword arguments to its closing log line, whose own `error` argument is taken.
COUNTERS = (
    "processed",
    "succeeded",
    "ready",
    "errored",
    "not_found",
    "no_external_id",
    "still_processing",
    "failed",
    "dead_lettered",
    "deferred",
    "lease_lost",
    "api_calls",
    "listing_calls",
    "lookup_calls",
    "get_calls",
    "malformed_listing_items",
)


@TASK.op
async def check_queued_videos(
    context: OpExecutionContext,
    config: VideoQueueConfig,
    database: Database,
    stream: CloudflareStream,
) -> TaskReport:
    owner = f"{context.run_id}:{secrets.token_hex(4)}"
    log = get_logger(dry_run=config.dry_run, lease_owner=owner)
    started = time.perf_counter()
    async with (
        database.engine() as engine,
        stream.client(breaker_store=DatabaseBreakerStore(engine)) as api,
    ):
        run = VideoQueueRun(engine, api, owner, config, log)
        error: ApiError | None = None
        try:
            # Inside the try: a cancellation landing as the lease commits must still give the
            # rows back (release_held works from the owner id, not from what we saw).
            leased = await lease_due_rows(
                engine, owner=owner, lease=timedelta(seconds=config.lease_seconds)
            )
            run.counts["processed"] = leased
            log.info("Leased queued videos", rows=leased)
            if leased:
                await run.settle_missing_external_ids()
                run.unseen = await run.count_unseen()
                await run.reconcile_listing()
                if run.unseen > 0 and run.stop_reason is None:
                    await run.resolve_unseen()
        except ApiError as err:
            # Fatal (401/403, quota, circuit open) or a listing that failed after retries.
            error = err
        finally:
            # Also on cancellation (the task timeout): what is still ours goes back now.
            run.counts["deferred"] += await release_held(
                engine, Streaming, owner=owner, log=log, done="Gave back rows left for the next run"
            )
        if error is not None:
            run.counts["api_calls"] = api.calls
            log.error("Stopping: Stream cannot be asked now", error, **run.counts)
            raise dagster_failure(error, task=TASK.name, counts=run.counts)
        counts = run.counts
        counts["api_calls"] = api.calls
        counts["succeeded"] = counts["ready"] + counts["errored"] + counts["still_processing"]
        counts["succeeded"] -= counts["dead_lettered"]  # in `errored` too, but a failure
        seed_calls = max(leased, 1)
        report = TaskReport(
            counts={key: int(counts.get(key, 0)) for key in COUNTERS},
            metadata={
                "api_calls_per_row": round(api.calls / seed_calls, 5),
                "seed_equivalent_calls": leased,
                "listing_from": run.listing_from.isoformat() if run.listing_from else None,
                "stopped_early": run.stop_reason,
                "dry_run": config.dry_run,
                "elapsed_s": round(time.perf_counter() - started, 3),
                "breaker": api.breaker_snapshot(),
            },
        )
    return report  # the task wrapper logs the counters in its closing line


job = TASK.job(check_queued_videos)

__all__ = [
    "NOT_FOUND",
    "TASK",
    "Verdict",
    "VideoQueueConfig",
    "check_queued_videos",
    "job",
    "lease_due_rows",
    "lookup_videos",
    "plan_write",
    "verdict_for",
]
