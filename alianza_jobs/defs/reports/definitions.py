"""Reports: the daily-partitioned report asset, its job and its 02:00 schedule."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.reports import daily_report
from alianza_jobs.platform.freshness import with_freshness
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    job = daily_report.job
    return dg.Definitions(
        # A deadline after each 02:00 tick: the day's report must have landed by then.
        assets=[with_freshness(a, daily_report.TASK, settings) for a in daily_report.assets],
        jobs=[job],
        schedules=[daily_report.TASK.schedule(job, settings)],
    )
