"""The email domain's table."""

from alianza_jobs.platform.assets import table

EMAIL_QUEUE = table(
    "email_queue",
    "Outgoing email: pending -> sending -> sent | failed (retried) | dead. "
    "Maintained by process_email_queue.",
)
