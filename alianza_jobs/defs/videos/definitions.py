"""Video: the Stream upload queue and the catalog mirror, and their tables."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.videos import process_streaming_video_queue, sync_stream_catalog
from alianza_jobs.defs.videos.assets import STREAM_VIDEOS, STREAMINGS
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    queue, sync = process_streaming_video_queue, sync_stream_catalog
    return dg.Definitions(
        assets=[STREAMINGS, STREAM_VIDEOS],
        jobs=[queue.job, sync.job],
        schedules=[
            queue.TASK.schedule(queue.job, settings),
            sync.TASK.schedule(sync.job, settings),
        ],
    )
