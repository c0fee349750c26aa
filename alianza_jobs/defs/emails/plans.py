"""What becomes of ``email_queue`` rows after each step: the row changes and dead letters to write.

Pure functions of the rows, Resend's answer and the clock; :mod:`.queue_sql` writes the result in
one transaction. A row Resend refused loses its key (nothing was sent under it); a row that died
of exhausted attempts keeps it, so a replay re-sends the same group under the same key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from alianza_jobs.clients.http import ApiError, PermanentApiError
from alianza_jobs.clients.resend import BatchItemResult
from alianza_jobs.db.models import DeadLetterSource, EmailStatus
from alianza_jobs.defs.emails.batches import Batch, QueuedEmail, SubBatch
from alianza_jobs.defs.emails.config import EmailQueueConfig
from alianza_jobs.logs import TaskLogger

# A dead letter keeps the email, but not a 40 MB body twice: the row itself still has all of it.
PAYLOAD_BODY_CHARS = 64 * 1024
ERROR_CHARS = 2000


@dataclass
class Plan:
    """The row changes and dead letters of one step, written in one transaction."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    # Counted when planned, whether or not the write then finds the rows still ours.
    dead_by_reason: dict[str, int] = field(default_factory=dict)

    def change(self, row_id: str, **values: Any) -> None:
        self.changes.append({"id": row_id, **values})

    @property
    def ids(self) -> list[str]:
        return [c["id"] for c in self.changes]


def _clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def dead_letter_payload(row: QueuedEmail) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": row.id,
        "to_address": row.to_address,
        "from_address": row.from_address,
        "subject": row.subject,
        "attempts": row.attempts,
    }
    for name in ("html", "text"):
        value: str | None = getattr(row, name)
        payload[name] = _clip(value, PAYLOAD_BODY_CHARS)
        if value is not None and len(value) > PAYLOAD_BODY_CHARS:
            payload[f"{name}_truncated_from_chars"] = len(value)
    return payload


def kill(
    plan: Plan, row: QueuedEmail, reason: str, now: datetime, *, key: str | None, kind: str
) -> None:
    """Row → ``dead`` with a dead letter, keeping ``key`` (None: cleared); the lease is cleared."""
    reason = reason[:ERROR_CHARS]
    plan.change(
        row.id,
        status=EmailStatus.DEAD.value,
        attempts=row.attempts,
        last_error=reason,
        idempotency_key=key,
        locked_until=None,
        locked_by=None,
    )
    payload = dead_letter_payload(row)
    payload["idempotency_key"] = key
    plan.dead_letters.append(
        {
            "source": DeadLetterSource.EMAIL_QUEUE.value,
            "source_id": row.id,
            "payload": payload,
            "error": reason,
            "failed_at": now,
        }
    )
    plan.dead_by_reason[kind] = plan.dead_by_reason.get(kind, 0) + 1


def exhausted(attempts: int, last_error: str | None) -> str:
    return f"gave up after {attempts} attempts; last error: {last_error or 'unknown'}"


def restore(plan: Plan, rows: Iterable[QueuedEmail]) -> None:
    """Rows back to the status they had when this run claimed them, lease cleared.

    Their key stays as the database has it: if the request did get through after all, the group is
    re-sent under that key and Resend answers from its cache. ``sending`` (a group a crashed run
    abandoned) comes back as ``failed``, due as before.
    """
    for row in rows:
        status = EmailStatus.FAILED.value if row.status == EmailStatus.SENDING.value else row.status
        plan.change(row.id, status=status, locked_until=None, locked_by=None)


def restored(rows: Iterable[QueuedEmail]) -> Plan:
    plan = Plan()
    restore(plan, rows)
    return plan


def results_plan(
    sub: SubBatch, results: Sequence[BatchItemResult], now: datetime, log: TaskLogger
) -> Plan:
    """Resend answered: each row is sent, or refused (dead, key cleared)."""
    plan = Plan()
    for row, result in zip(sub.rows, results, strict=True):
        if result.ok:
            plan.change(
                row.id,
                status=EmailStatus.SENT.value,
                provider_message_id=result.id,
                sent_at=now,
                last_error=None,
                locked_until=None,
                locked_by=None,
            )
            continue
        message = result.error.message if result.error else "refused"
        kill(plan, row, f"refused by Resend: {message}", now, key=None, kind="refused")
        log.warning("Email refused by Resend", email_id=row.id, reason=message)
    return plan


def refused_plan(sub: SubBatch, err: PermanentApiError, now: datetime) -> Plan:
    """Resend refused the whole request: every row dead, key cleared.

    A 409 on the key means an earlier send under it, with other content, did arrive: re-sending
    could duplicate it, so the rows die and only a deliberate replay sends them again.
    """
    plan = Plan()
    if err.code == "invalid_idempotent_request":
        reason = (
            "idempotency conflict: an earlier send of this batch reached Resend with other "
            "content, so it was probably delivered then; not re-sent to avoid a duplicate "
            f"(replay to send it anyway) [{err}]"
        )
        kind = "conflict"
    else:
        reason = f"batch refused by Resend: {err}"
        kind = "refused"
    for row in sub.rows:
        kill(plan, row, reason, now, key=None, kind=kind)
    return plan


def retry_plan(
    sub: SubBatch,
    err: ApiError,
    now: datetime,
    config: EmailQueueConfig,
    rand: Callable[[], float],
) -> Plan:
    """Outcome unknown: keep the key; retry the group later, or give up at max attempts."""
    plan = Plan()
    attempts = max(r.attempts for r in sub.rows) + 1
    error = f"attempt {attempts}: {err}"[:ERROR_CHARS]
    if attempts >= config.max_attempts:
        for row in sub.rows:
            row.attempts = attempts
            kill(plan, row, exhausted(attempts, error), now, key=sub.key, kind="exhausted")
        return plan
    retry_at = now + config.backoff(attempts, rand())
    for row in sub.rows:
        plan.change(
            row.id,
            status=EmailStatus.FAILED.value,
            attempts=attempts,
            next_attempt_at=retry_at,
            last_error=error,
            locked_until=None,
            locked_by=None,
        )
    return plan


def interrupted_plan(batch: Batch, exc: BaseException, now: datetime) -> Plan:
    """The run ends mid-batch. Stamped rows may have been sent: ``failed``, key kept, the attempt
    counted, due at once as a group; the others go back as they were."""
    plan = Plan()
    stamped = [r for r in batch.open_rows if r.id in batch.stamped]
    if stamped:
        attempts = max(r.attempts for r in stamped) + 1
        error = f"attempt {attempts} interrupted: {type(exc).__name__}: {exc}"[:ERROR_CHARS]
        for row in stamped:
            plan.change(
                row.id,
                status=EmailStatus.FAILED.value,
                attempts=attempts,
                next_attempt_at=now,
                last_error=error,
                locked_until=None,
                locked_by=None,
            )
    restore(plan, [r for r in batch.open_rows if r.id not in batch.stamped])
    return plan
