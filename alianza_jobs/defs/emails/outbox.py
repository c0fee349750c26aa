"""What other domains may do with email: put messages in the queue that ``process_email_queue``
sends, in the caller's own transaction, so a report and its notification commit or vanish together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from alianza_jobs.db.models import EmailQueue, EmailStatus
from alianza_jobs.db.types import utcnow


@dataclass(frozen=True)
class NewEmail:
    """One message to one recipient (the queue sends one address per row), from ``EMAIL_FROM``."""

    to: str
    subject: str
    text: str
    html: str | None = None


async def enqueue_emails(conn: AsyncConnection, emails: Sequence[NewEmail]) -> list[int]:
    """Queue the emails as due now; returns their queue ids, in order."""
    if not emails:
        return []
    now = utcnow()
    rows = [
        {
            "to_address": email.to,
            "from_address": None,  # the queue fills in EMAIL_FROM
            "subject": email.subject,
            "text": email.text,
            "html": email.html,
            "status": EmailStatus.PENDING.value,
            "next_attempt_at": now,
        }
        for email in emails
    ]
    result = await conn.execute(
        insert(EmailQueue).returning(EmailQueue.id, sort_by_parameter_order=True), rows
    )
    return [int(i) for i in result.scalars()]
