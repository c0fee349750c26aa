"""Video: the Stream upload queue, the webhooks that settle it early, the catalog mirror, and
their tables."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.videos import (
    apply_stream_webhooks,
    process_streaming_video_queue,
    sync_stream_catalog,
)
from alianza_jobs.defs.videos.assets import STREAM_VIDEOS, STREAMINGS
from alianza_jobs.platform.freshness import with_freshness
from alianza_jobs.platform.task import TaskSpec
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    queue, sync, webhooks = (
        process_streaming_video_queue,
        sync_stream_catalog,
        apply_stream_webhooks,
    )
    return dg.Definitions(
        # Each table's freshness follows the cron of the job that keeps it (the webhooks' runs
        # update streamings too, but only the queue's schedule is bound to a clock).
        assets=[
            with_freshness(STREAMINGS, queue.TASK, settings),
            with_freshness(STREAM_VIDEOS, sync.TASK, settings),
        ],
        jobs=[queue.job, sync.job, webhooks.job],
        # The queue's cron stays the safety net for deliveries that never came. The catalog
        # sync's ticks skip when the platform has no upload the mirror lacks and the mirror no
        # video still processing (see its probe for what that cannot see).
        schedules=[
            queue.TASK.schedule(queue.job, settings),
            sync.TASK.schedule(sync.job, settings),
        ],
    )


def sensed_queues() -> list[tuple[TaskSpec, dg.JobDefinition]]:
    """The jobs the work sensor launches when their queue has work: the stored webhooks."""
    return [(apply_stream_webhooks.TASK, apply_stream_webhooks.job)]
