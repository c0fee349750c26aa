"""The code location: every task's job and schedule, the asset catalog, sensors and resources.

Each task lives in ``alianza_jobs/tasks/<job name>.py`` and exports ``TASK`` (its TaskSpec: cron,
timeout, retries), ``job``, and optionally ``assets`` / ``asset_checks``. To add a task, copy a module
there and list it in ``TASKS`` below.
"""

from __future__ import annotations

from types import ModuleType

from dagster import Definitions

from alianza_jobs.assets import SERVICES, TABLES
from alianza_jobs.core.task import check_cron_overrides
from alianza_jobs.resources import build_resources
from alianza_jobs.sensors.alerts import sensors as alert_sensors
from alianza_jobs.settings import load_settings
from alianza_jobs.tasks import (
    cleanup_expired_sessions,
    daily_report,
    health_check,
    process_email_queue,
    process_streaming_video_queue,
    replay_dead_letters,
    sync_stream_catalog,
)

settings = load_settings()

TASKS: list[ModuleType] = [
    process_streaming_video_queue,
    process_email_queue,
    health_check,
    sync_stream_catalog,
    cleanup_expired_sessions,
    daily_report,
    replay_dead_letters,
]

check_cron_overrides(settings, [task.TASK for task in TASKS])

defs = Definitions(
    assets=[*TABLES, *SERVICES, *(a for task in TASKS for a in getattr(task, "assets", []))],
    asset_checks=[c for task in TASKS for c in getattr(task, "asset_checks", [])],
    jobs=[task.job for task in TASKS],
    schedules=[s for task in TASKS if (s := task.TASK.schedule(task.job, settings)) is not None],
    sensors=alert_sensors,
    resources=build_resources(settings),
)
