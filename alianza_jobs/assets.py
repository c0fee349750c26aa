"""The asset catalog: the tables the jobs maintain, and the services the health check watches.

The tables are plain ``AssetSpec``s (Dagster's "external assets"): the queue jobs are ops, not
asset computations, and report a materialization of the table they wrote at the end of each run
(see ``TaskSpec(assets=...)``), so each table's page in the UI plots that job's counters over time.
``daily_reports`` is a real, daily-partitioned asset downstream of the others, which gives the UI its
lineage graph.
"""

from __future__ import annotations

from dagster import AssetSpec

from alianza_jobs.core.task import OWNER

TABLE_GROUP = "app_tables"
SERVICE_GROUP = "services"

STREAMINGS = AssetSpec(
    "streamings",
    description="Uploaded videos waiting for Cloudflare Stream: queued -> ready | error. "
    "Maintained by process_streaming_video_queue.",
    group_name=TABLE_GROUP,
    owners=[OWNER],
    kinds={"table"},
)
EMAIL_QUEUE = AssetSpec(
    "email_queue",
    description="Outgoing email: pending -> sending -> sent | failed (retried) | dead. "
    "Maintained by process_email_queue.",
    group_name=TABLE_GROUP,
    owners=[OWNER],
    kinds={"table"},
)
USER_SESSIONS = AssetSpec(
    "user_sessions",
    description="Login sessions; expired ones are removed nightly by cleanup_expired_sessions.",
    group_name=TABLE_GROUP,
    owners=[OWNER],
    kinds={"table"},
)
STREAM_VIDEOS = AssetSpec(
    "stream_videos",
    description="Mirror of the Cloudflare Stream catalog, kept by sync_stream_catalog.",
    group_name=TABLE_GROUP,
    owners=[OWNER],
    kinds={"table"},
)

APP_DATABASE = AssetSpec(
    "app_database",
    description="The application database (DATABASE_URL).",
    group_name=SERVICE_GROUP,
    owners=[OWNER],
)
CLOUDFLARE_STREAM_API = AssetSpec(
    "cloudflare_stream_api",
    description="Cloudflare Stream API (CLOUDFLARE_API_BASE_URL).",
    group_name=SERVICE_GROUP,
    owners=[OWNER],
)
RESEND_API = AssetSpec(
    "resend_api",
    description="Resend email API (RESEND_API_BASE_URL).",
    group_name=SERVICE_GROUP,
    owners=[OWNER],
)
REPORT_STORAGE = AssetSpec(
    "report_storage",
    description="Where daily report files are written (REPORTS_DIR).",
    group_name=SERVICE_GROUP,
    owners=[OWNER],
)

TABLES = [STREAMINGS, EMAIL_QUEUE, USER_SESSIONS, STREAM_VIDEOS]
SERVICES = [APP_DATABASE, CLOUDFLARE_STREAM_API, RESEND_API, REPORT_STORAGE]
