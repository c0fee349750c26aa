"""The session domain's table."""

from alianza_jobs.platform.assets import table

USER_SESSIONS = table(
    "user_sessions",
    "Login sessions; expired ones are removed nightly by cleanup_expired_sessions.",
)
