"""Health: the services the jobs depend on, as assets, and the check that probes them."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.health import health_check
from alianza_jobs.defs.health.assets import SERVICES
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    job = health_check.job
    return dg.Definitions(
        assets=SERVICES,
        asset_checks=health_check.asset_checks,
        jobs=[job],
        schedules=[health_check.TASK.schedule(job, settings)],
    )
