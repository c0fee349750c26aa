"""The code location: every domain's definitions under ``defs/``, merged, with the resources.

One folder per domain (``defs/emails``, ``defs/videos``, ...) holds its jobs, schedules, sensors,
assets and logic; its ``definitions.py`` says what it contributes. To add a task, copy a task
module within its domain (or a domain folder), and list the new domain here.
"""

from __future__ import annotations

import warnings

import dagster as dg

from alianza_jobs.defs.alerts import definitions as alerts
from alianza_jobs.defs.dead_letters import definitions as dead_letters
from alianza_jobs.defs.emails import definitions as emails
from alianza_jobs.defs.health import definitions as health
from alianza_jobs.defs.reports import definitions as reports
from alianza_jobs.defs.sessions import definitions as sessions
from alianza_jobs.defs.videos import definitions as videos
from alianza_jobs.platform.freshness import check_freshness_overrides, fresh_tables
from alianza_jobs.platform.schedules import check_cron_overrides, work_sensor
from alianza_jobs.resources import build_resources
from alianza_jobs.settings import Settings, load_settings

# Dagster 1.13 copies every plain sensor when it loads a code location (to add its reconstruction
# metadata) and passes the copy `owners=[]`, which its beta check mistakes for an owner being set:
# a BetaWarning about a parameter we never use, printed by every command that loads the location.
warnings.filterwarnings(
    "ignore",
    message=r"Parameter `owners` of initializer `SensorDefinition.__init__` is currently in beta",
    category=dg.BetaWarning,
)

DOMAINS = (videos, emails, health, sessions, reports, dead_letters, alerts)
# The domains whose queues the work sensor watches (each lists its jobs in `sensed_queues`).
SENSED = (emails, videos)


def build_defs(settings: Settings) -> dg.Definitions:
    # ALIANZA_EVENT_TRIGGERS=false: no work sensor, every tick runs (the TypeScript way).
    queues = [queue for domain in SENSED for queue in domain.sensed_queues()]
    sensors = [work_sensor(queues)] if settings.event_triggers else []
    merged = dg.Definitions.merge(
        *(domain.build_defs(settings) for domain in DOMAINS),
        dg.Definitions(resources=build_resources(settings), sensors=sensors),
    )
    check_cron_overrides(
        settings,
        [job.name for job in merged.jobs or []],
        scheduled=[
            s.job_name for s in merged.schedules or [] if isinstance(s, dg.ScheduleDefinition)
        ],
    )
    tables = fresh_tables(merged.assets or [])
    check_freshness_overrides(settings, [key.to_user_string() for key in tables])
    return merged


settings = load_settings()
defs = build_defs(settings)
