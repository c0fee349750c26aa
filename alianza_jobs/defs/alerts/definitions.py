"""Alerts: failure and recovery sensors over every job's runs."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.alerts.sensors import alert_on_run_failure, notify_on_recovery
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(sensors=[alert_on_run_failure, notify_on_recovery])
