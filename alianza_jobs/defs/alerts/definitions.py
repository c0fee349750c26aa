"""Alerts: failure and recovery sensors over every job's runs, and stale-table alerts over the
tables that have a freshness policy."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.alerts.freshness import alert_on_stale_tables
from alianza_jobs.defs.alerts.sensors import alert_on_run_failure, notify_on_recovery
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(sensors=[alert_on_run_failure, notify_on_recovery, alert_on_stale_tables])
