"""``process_streaming_video_queue``: settles queued Cloudflare Stream uploads (``streamings``) as
ready, error or still processing, by leasing every due row, reconciling them against bulk listings
of Stream's catalog, and resolving the rest with ``id`` lookups, at about one API call per thousand
rows; see docs/videos.md for how and why."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

from dagster import Backoff, Jitter, OpExecutionContext

from alianza_jobs.clients.http import ApiError
from alianza_jobs.db.claims import release_held
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos.queue_config import VideoQueueConfig
from alianza_jobs.defs.videos.queue_run import VideoQueueRun
from alianza_jobs.defs.videos.queue_sql import CHECKS, NO_EXTERNAL_ID, count_due, lease_due_rows
from alianza_jobs.defs.videos.reconcile import NOT_FOUND_REASON
from alianza_jobs.logs import get_logger
from alianza_jobs.platform.breakers import DatabaseBreakerStore
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.platform.schedules import Backlog
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import CloudflareStream, Database

# The probe counts no further: enough to say "there is work" and roughly how much.
BACKLOG_CAP = 1000


def queued_videos(database: Database) -> Backlog:
    """The schedule's question: are there queued videos a run would lease now?"""
    with database.probe() as (conn, tables):
        count = count_due(conn, tables, now=utcnow(), cap=BACKLOG_CAP)
    return Backlog(count, "queued videos" if count != 1 else "queued video")


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
    backlog=queued_videos,
)

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
        # Before anything is leased: a database that cannot hold what the run writes fails here.
        tables = await database.platform(engine)
        run = VideoQueueRun(engine, tables, api, owner, config, log)
        error: ApiError | None = None
        try:
            # Inside the try: a cancellation landing as the lease commits must still give the
            # rows back (release_held works from the owner id, not from what we saw).
            leased = await lease_due_rows(
                engine, tables, owner=owner, lease=timedelta(seconds=config.lease_seconds)
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
                engine, CHECKS, owner=owner, log=log, done="Gave back rows left for the next run"
            )
        if error is not None:
            run.counts["api_calls"] = api.calls
            log.error("Stopping: Stream cannot be asked now", error, **run.counts)
            raise dagster_failure(error, task=TASK.name, counts=run.counts)
        counts = run.counts
        counts["api_calls"] = api.calls
        counts["succeeded"] = counts["ready"] + counts["errored"] + counts["still_processing"]
        counts["succeeded"] -= counts["dead_lettered"]  # in `errored` too, but a failure
        report = TaskReport(
            counts={key: int(counts.get(key, 0)) for key in COUNTERS},
            metadata={
                "api_calls_per_row": round(api.calls / max(leased, 1), 5),
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

# Also imported from here by the reliability suite, which knows the job by its module.
__all__ = [
    "NOT_FOUND_REASON",
    "NO_EXTERNAL_ID",
    "TASK",
    "VideoQueueConfig",
    "check_queued_videos",
    "job",
    "lease_due_rows",
]
