"""Sessions: the nightly removal of expired login sessions, and their table."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.sessions import cleanup_expired_sessions
from alianza_jobs.defs.sessions.assets import USER_SESSIONS
from alianza_jobs.platform.freshness import with_freshness
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    job = cleanup_expired_sessions.job
    return dg.Definitions(
        # A cleanup that silently stops lets expired sessions pile up: its table goes stale.
        assets=[with_freshness(USER_SESSIONS, cleanup_expired_sessions.TASK, settings)],
        jobs=[job],
        schedules=[cleanup_expired_sessions.TASK.schedule(job, settings)],
    )
