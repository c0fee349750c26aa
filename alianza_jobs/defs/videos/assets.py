"""The video domain's tables: the upload queue and the mirrored Stream catalog."""

from alianza_jobs.platform.assets import table

STREAMINGS = table(
    "streamings",
    "Uploaded videos waiting for Cloudflare Stream: queued -> ready | error. "
    "Maintained by process_streaming_video_queue.",
)
STREAM_VIDEOS = table(
    "stream_videos", "Mirror of the Cloudflare Stream catalog, kept by sync_stream_catalog."
)
