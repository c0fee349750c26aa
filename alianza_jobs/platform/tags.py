"""The owner and the tags our jobs, ops, schedules and runs carry: the task wrapper and the schedules
set them, the CLI reads them back from the runs.
"""

from __future__ import annotations

OWNER = "team:platform"
TAG_JOB = "alianza/job"
TAG_CRON = "alianza/cron"
TAG_SCHEDULED_TIME = "alianza/scheduled_time"
TAG_TRIGGER = "alianza/trigger"
TAG_TIMEOUT = "alianza/timeout_seconds"
TAG_RETRIES = "alianza/retry_policy"
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Asset metadata: the job that keeps a table current, and how its freshness window was derived
# (both shown on the table's page in the UI, and quoted by the stale-table alerts).
META_MAINTAINED_BY = "alianza/maintained_by"
META_FRESHNESS = "alianza/freshness"
