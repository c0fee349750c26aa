"""``apply_stream_webhooks``: settles the videos that Cloudflare Stream's webhooks reported ready or
in error, seconds after Stream sent them, instead of at the video queue's next tick.

The receiver (``webhook_receiver``, served by ``alianza-jobs webhooks serve``) stores each verified
delivery; the work sensor launches this job when any is pending, one run at a time, and each run
takes every pending delivery in batches. A delivery's body is the video as Stream's API returns
it, signed, so its own state settles the video: the rows of its uid are leased like the queue's
(a row another run holds is left to it), given the same verdict the queue would give, and written
the same way. A delivery whose video cannot be read is asked about with one ``id``-filtered
lookup per batch. A uid the platform does not know is recorded as such and ignored. The video
queue's cron stays as the safety net for deliveries that never came.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from datetime import timedelta

import dagster as dg
from dagster import Backoff, Jitter, OpExecutionContext
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.http import ApiError, FatalApiError
from alianza_jobs.clients.stream import StreamClient, StreamVideo, parse_video
from alianza_jobs.db.claims import release_held
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.platform_tables import PlatformTables
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos import queue_sql, webhook_sql
from alianza_jobs.defs.videos.queue_config import VideoQueueConfig
from alianza_jobs.defs.videos.queue_run import STREAM_UID, VideoQueueRun
from alianza_jobs.defs.videos.queue_sql import CHECKS, lease_due_rows
from alianza_jobs.defs.videos.reconcile import Verdict, verdict_for
from alianza_jobs.logs import TaskLogger, get_logger
from alianza_jobs.platform.breakers import DatabaseBreakerStore
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.platform.schedules import Backlog
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import CloudflareStream, Database

BACKLOG_CAP = 10_000


def pending_webhooks(database: Database) -> Backlog:
    """The sensor's question: are there stored deliveries not yet applied?"""
    with database.probe() as (conn, _tables):
        count = webhook_sql.count_pending(conn, cap=BACKLOG_CAP)
    return Backlog(
        count, "pending webhook deliveries" if count != 1 else "pending webhook delivery"
    )


TASK = TaskSpec(
    name="apply_stream_webhooks",
    description=(
        "Settles the videos Cloudflare Stream's webhooks reported ready or in error (streamings), "
        "from the deliveries the receiver stored; launched by its sensor within seconds."
    ),
    timeout=timedelta(minutes=1),
    retry=Retry(
        max_retries=3,
        delay=timedelta(seconds=5),
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    ),
    assets=["streamings"],
    backlog=pending_webhooks,
)


class WebhookApplyConfig(dg.Config):
    batch_size: int = Field(
        default=500,
        ge=1,
        le=1000,
        description="Deliveries settled per batch (one lease, one bulk write, at most one lookup).",
    )
    time_budget_seconds: float = Field(
        default=40.0,
        gt=0,
        description="Start no batch after this long (the timeout is 60 s); the rest waits.",
    )
    keep_applied_days: int = Field(
        default=7, ge=1, description="Applied deliveries older than this are deleted."
    )
    lease_seconds: float = Field(default=120.0, ge=30.0, description="How long rows stay ours.")


COUNTERS = (
    "deliveries",
    "applied",
    "deferred",
    "ready",
    "errored",
    "still_processing",
    "failed",
    "already_settled",
    "unknown_uid",
    "lookup_calls",
    "lease_lost",
    "pruned",
)


@TASK.op
async def settle_delivered_videos(
    context: OpExecutionContext,
    config: WebhookApplyConfig,
    database: Database,
    stream: CloudflareStream,
) -> TaskReport:
    owner = f"{context.run_id}:{secrets.token_hex(4)}"
    log = get_logger(lease_owner=owner)
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    async with (
        database.engine() as engine,
        stream.client(breaker_store=DatabaseBreakerStore(engine)) as api,
    ):
        tables = await database.platform(engine)
        queue = VideoQueueRun(engine, tables, api, owner, VideoQueueConfig(), log)
        try:
            while time.perf_counter() - started < config.time_budget_seconds:
                batch = await webhook_sql.pending_deliveries(engine, limit=config.batch_size)
                if not batch:
                    break
                outcomes = await apply_batch(queue, batch, config=config, log=log)
                await webhook_sql.mark_applied(
                    engine, {d.id: outcomes[d.uid] for d in batch}, now=utcnow()
                )
                counts["deliveries"] += len(batch)
                counts.update(outcomes[d.uid] for d in batch)
                if len(batch) < config.batch_size:
                    break
        except FatalApiError as err:
            raise dagster_failure(err, task=TASK.name, counts=dict(counts)) from None
        finally:
            await release_held(
                engine, CHECKS, owner=owner, log=log, done="Gave back rows left for the next run"
            )
        counts["pruned"] = await webhook_sql.prune_applied(
            engine, before=utcnow() - timedelta(days=config.keep_applied_days), limit=10_000
        )
        counts["lookup_calls"] = api.calls
    for key in ("ready", "errored", "still_processing", "failed", "lease_lost"):
        counts[key] = queue.counts.get(key, 0)
    return TaskReport(
        counts={key: int(counts.get(key, 0)) for key in COUNTERS},
        metadata={"elapsed_s": round(time.perf_counter() - started, 3)},
    )


async def apply_batch(
    queue: VideoQueueRun,
    batch: list[webhook_sql.PendingDelivery],
    *,
    config: WebhookApplyConfig,
    log: TaskLogger,
) -> dict[str, str]:
    """Settle the rows of the batch's uids; returns each uid's outcome: applied, deferred (left
    to the queue), already_settled (no queued row free to lease) or unknown_uid."""
    # Later deliveries of one uid supersede earlier ones (the batch is oldest first).
    videos: dict[str, StreamVideo] = {d.uid: parse_video(d.payload) for d in batch}
    verdicts: dict[str, Verdict] = {}
    unreadable: list[str] = []
    for uid, video in videos.items():
        verdict = verdict_for(video)
        if verdict.outcome == "failed" or video.uid != uid:
            unreadable.append(uid)
        else:
            verdicts[uid] = verdict
    if unreadable:
        verdicts |= await look_up(queue.api, unreadable, log)
    uids = list(videos)
    leased = await lease_due_rows(
        queue.engine,
        queue.tables,
        owner=queue.owner,
        lease=timedelta(seconds=config.lease_seconds),
        external_ids=uids,
    )
    ours: set[str] = set()
    if leased:
        rows = await queue_sql.owned_rows_of(queue.engine, queue.tables, queue.owner, uids)
        ours = {row.external_id for row in rows}
        matched, labels = await queue.settle({u: v for u, v in verdicts.items() if u in ours})
        log.info("Settled videos from webhooks", deliveries=len(batch), rows=matched, **labels)
    known = await known_uids(queue.engine, queue.tables, uids)

    def outcome(uid: str) -> str:
        if uid in ours:
            # Without a verdict (unreadable, lookup failed) the row went back to the queue.
            return "applied" if uid in verdicts else "deferred"
        # Known but not leased: settled already, or held by a video queue run that will settle it.
        return "already_settled" if uid in known else "unknown_uid"

    return {uid: outcome(uid) for uid in uids}


async def look_up(api: StreamClient, uids: list[str], log: TaskLogger) -> dict[str, Verdict]:
    """One ``id``-filtered lookup for the deliveries whose video could not be read; a uid it
    cannot settle is left to the video queue's next tick."""
    listable = [uid for uid in uids if STREAM_UID.match(uid)]
    if not listable:
        return {}
    try:
        found = await api.find_videos(listable[:1000])
    except FatalApiError:
        raise
    except ApiError as err:
        log.warning("Lookup for unreadable deliveries failed; the queue will ask", error=str(err))
        return {}
    verdicts = {v.uid: verdict_for(v) for v in found if v.uid in listable}
    return {uid: v for uid, v in verdicts.items() if v.outcome != "failed"}


async def known_uids(engine: AsyncEngine, tables: PlatformTables, uids: list[str]) -> set[str]:
    """The uids some platform row names, whatever its status."""
    s = tables.streamings
    stmt = select(s.c.external_id).where(s.c.external_id.in_(uids)).distinct()
    async with read_only(engine).connect() as conn:
        return set((await conn.scalars(stmt)).all())


job = TASK.job(settle_delivered_videos)

__all__ = ["TASK", "WebhookApplyConfig", "job", "pending_webhooks", "settle_delivered_videos"]
