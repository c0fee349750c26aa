"""Email: the queue sent through Resend. Other domains use only :func:`enqueue_emails`."""

from alianza_jobs.defs.emails.outbox import NewEmail, enqueue_emails

__all__ = ["NewEmail", "enqueue_emails"]
