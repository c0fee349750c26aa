"""Sessions: the nightly removal of expired login sessions, and their table."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.sessions import cleanup_expired_sessions
from alianza_jobs.defs.sessions.assets import USER_SESSIONS
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    job = cleanup_expired_sessions.job
    return dg.Definitions(
        assets=[USER_SESSIONS],
        jobs=[job],
        schedules=[cleanup_expired_sessions.TASK.schedule(job, settings)],
    )
