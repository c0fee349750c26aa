"""A claimed email (:class:`QueuedEmail`), a claimed batch of them, its split into Resend requests, and their idempotency
keys: a fresh batch is split where a request would pass ``max_request_bytes``, each request keyed
by its emails and row ids; a group (rows already stamped) is sent again as one request under the key
it has."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from alianza_jobs.clients.resend import OutgoingEmail, idempotency_key_for
from alianza_jobs.defs.emails.rules import wire_size


@dataclass
class QueuedEmail:
    """One claimed email: the platform row's content and our delivery's bookkeeping."""

    id: str
    to_address: str
    from_address: str | None
    subject: str
    html: str | None
    text: str | None
    status: str
    attempts: int
    last_error: str | None
    idempotency_key: str | None


@dataclass
class Batch:
    """Rows one worker holds, and which of them were stamped with a key (may have been sent)."""

    rows: list[QueuedEmail]
    group_key: str | None = None
    stamped: dict[str, QueuedEmail] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    @property
    def open_rows(self) -> list[QueuedEmail]:
        return [r for r in self.rows if r.id not in self.done]


@dataclass
class SubBatch:
    """One Resend request: its key, its rows and their emails, in the same order."""

    key: str
    rows: list[QueuedEmail]
    emails: list[OutgoingEmail]


def key_for(rows: Sequence[QueuedEmail], emails: Sequence[OutgoingEmail]) -> str:
    # The row ids in the namespace keep two intended emails with equal content from sharing a key.
    namespace = "email_queue:" + ",".join(str(r.id) for r in rows)
    return idempotency_key_for(emails, namespace=namespace)


def split(
    batch: Batch, valid: Sequence[tuple[QueuedEmail, OutgoingEmail]], *, max_request_bytes: int
) -> list[SubBatch]:
    """The requests that send ``valid`` (the batch's rows that passed the rules)."""
    if not valid:
        return []
    if batch.group_key is not None:
        # A new key for a group whose old one may have delivered would risk a duplicate.
        return [SubBatch(batch.group_key, [row for row, _ in valid], [e for _, e in valid])]
    subs: list[SubBatch] = []
    rows: list[QueuedEmail] = []
    emails: list[OutgoingEmail] = []
    size = 2  # the JSON array's brackets
    for row, email in valid:
        item = wire_size(email) + 1
        if rows and size + item > max_request_bytes:
            subs.append(SubBatch(key_for(rows, emails), rows, emails))
            rows, emails, size = [], [], 2
        rows.append(row)
        emails.append(email)
        size += item
    subs.append(SubBatch(key_for(rows, emails), rows, emails))
    return subs
