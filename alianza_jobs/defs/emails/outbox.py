"""What other domains may do with email: put messages in the queue that ``process_email_queue``
sends, in the caller's own transaction, so a report and its notification commit or vanish together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from alianza_jobs.db.models import EmailStatus
from alianza_jobs.db.platform_tables import PlatformTables


@dataclass(frozen=True)
class NewEmail:
    """One message to one recipient (the queue sends one address per row), from ``EMAIL_FROM``."""

    to: str
    subject: str
    text: str
    html: str | None = None


async def enqueue_emails(
    conn: AsyncConnection, tables: PlatformTables, emails: Sequence[NewEmail]
) -> list[str]:
    """Queue the emails in the platform's email queue, due now; returns their ids, in order."""
    if not emails:
        return []
    queue = tables.email_queue
    pending = tables.status("email_queue", EmailStatus.PENDING.value)
    rows = []
    for email in emails:
        # The sender is left to the queue (EMAIL_FROM); columns the platform lacks are left out.
        row: dict[str, str | None] = {
            "to_address": email.to,
            "subject": email.subject,
            "status": pending,
        }
        row |= {k: v for k, v in (("text", email.text), ("html", email.html)) if k in queue.c}
        rows.append(row)
    result = await conn.execute(
        insert(queue).returning(queue.c.id, sort_by_parameter_order=True), rows
    )
    return [str(i) for i in result.scalars()]
