"""The code location: every task's job and schedule, the table assets, sensors and resources.

A task lives in ``alianza_jobs/tasks/<job name>.py``; to add one, copy a module there and list it in
``TASKS`` below.
"""

from __future__ import annotations

from types import ModuleType

from dagster import Definitions

from alianza_jobs.core.task import check_cron_overrides
from alianza_jobs.settings import load_settings

settings = load_settings()

TASKS: list[ModuleType] = []

check_cron_overrides(settings, [task.TASK for task in TASKS])

defs = Definitions(
    jobs=[task.job for task in TASKS],
    schedules=[s for task in TASKS if (s := task.TASK.schedule(task.job, settings)) is not None],
)
