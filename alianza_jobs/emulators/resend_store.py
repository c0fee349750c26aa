"""The Resend emulator's rows in the state store: idempotency keys claimed, replayed and released,
emails delivered together with the answer stored for their key (in one transaction, under the
quotas), and the inbox read back (delivered emails, counts per key and per message). The calls
block: the ASGI side runs them in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.config import ResendSettings
from alianza_jobs.emulators.resend_validation import Invalid
from alianza_jobs.emulators.state import StateStore


def _as_list(value: Any) -> list[str] | None:
    if value is None or value == "" or value == []:
        return None
    return [value] if isinstance(value, str) else list(value)


def fingerprint(item: Mapping[str, Any]) -> str:
    """Same sender, recipients, subject and body: the "same message" a user would see twice."""
    canonical = {
        "from": item.get("from"),
        "to": sorted(_as_list(item.get("to")) or []),
        "cc": sorted(_as_list(item.get("cc")) or []),
        "bcc": sorted(_as_list(item.get("bcc")) or []),
        "subject": item.get("subject"),
        "html": item.get("html"),
        "text": item.get("text"),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:32]


# -- idempotency and delivery (blocking state operations) -------------------------------------------


@dataclass(frozen=True)
class Claim:
    outcome: Literal["new", "replay", "mismatch", "concurrent"]
    status: int | None = None
    body: str | None = None


def claim_key(
    store: StateStore,
    *,
    api_key_sha256: str,
    key: str,
    request_sha256: str,
    now: float,
    settings: ResendSettings,
) -> Claim:
    with store.write() as conn:
        row = conn.execute(
            "SELECT * FROM idempotency WHERE api_key_sha256 = ? AND key = ?",
            (api_key_sha256, key),
        ).fetchone()
        if row is not None and row["created"] <= now - settings.idempotency_ttl_s:
            conn.execute(
                "DELETE FROM idempotency WHERE api_key_sha256 = ? AND key = ?",
                (api_key_sha256, key),
            )
            row = None
        if row is None:
            conn.execute(
                "INSERT INTO idempotency (api_key_sha256, key, request_sha256, state, created, "
                "updated) VALUES (?, ?, ?, 'in_flight', ?, ?)",
                (api_key_sha256, key, request_sha256, now, now),
            )
            return Claim("new")
        if row["request_sha256"] != request_sha256:
            return Claim("mismatch")
        if row["state"] == "done":
            conn.execute(
                "UPDATE idempotency SET replays = replays + 1 WHERE api_key_sha256 = ? AND key = ?",
                (api_key_sha256, key),
            )
            return Claim("replay", row["status"], row["body"])
        if row["updated"] <= now - settings.in_flight_timeout_s:
            # Its process died mid-request: the key is ours now.
            conn.execute(
                "UPDATE idempotency SET updated = ? WHERE api_key_sha256 = ? AND key = ?",
                (now, api_key_sha256, key),
            )
            return Claim("new")
        return Claim("concurrent")


def release_key(store: StateStore, *, api_key_sha256: str, key: str) -> None:
    with store.write() as conn:
        conn.execute(
            "DELETE FROM idempotency WHERE api_key_sha256 = ? AND key = ? AND state = 'in_flight'",
            (api_key_sha256, key),
        )


@dataclass(frozen=True)
class Delivered:
    status: int
    body: str


def deliver(
    store: StateStore,
    *,
    api_key_sha256: str,
    idempotency_key: str | None,
    emails: Sequence[tuple[int | None, Mapping[str, Any]]],
    now: float,
    settings: ResendSettings,
    answer: Callable[[list[str]], tuple[int, Any]],
) -> Delivered | Invalid:
    """Store ``emails`` as delivered and, in the same transaction, the answer for their key.

    Either both happen or neither: a crash can never leave mail sent under a key that would let
    a retry send it again. Quotas are checked under the same write lock.
    """
    now_us = rfc3339.to_us(now)
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    with store.write() as conn:
        for quota, since, name, what in (
            (settings.daily_quota, today, "daily_quota_exceeded", "daily"),
            (settings.monthly_quota, month, "monthly_quota_exceeded", "monthly"),
        ):
            if quota is None:
                continue
            (sent,) = conn.execute(
                "SELECT COUNT(*) FROM emails WHERE created_us >= ?", (rfc3339.to_us(since),)
            ).fetchone()
            if sent + len(emails) > quota:
                return Invalid(name, f"You have reached your {what} email sending quota.")
        (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM emails").fetchone()
        ids: list[str] = []
        rows = []
        for index, item in emails:
            email_id = str(uuid.uuid4())
            ids.append(email_id)
            seq += 1
            rows.append(
                (
                    email_id,
                    seq,
                    now_us,
                    api_key_sha256,
                    str(item["from"]),
                    json.dumps(_as_list(item.get("to"))),
                    _json_or_none(_as_list(item.get("cc"))),
                    _json_or_none(_as_list(item.get("bcc"))),
                    _json_or_none(_as_list(item.get("reply_to"))),
                    str(item["subject"]),
                    item.get("html"),
                    item.get("text"),
                    _json_or_none(item.get("headers")),
                    _json_or_none(item.get("tags")),
                    item.get("scheduled_at"),
                    idempotency_key,
                    index,
                    fingerprint(item),
                )
            )
        conn.executemany(
            "INSERT INTO emails (id, seq, created_us, api_key_sha256, from_addr, to_json, cc_json, "
            "bcc_json, reply_to_json, subject, html, text, headers_json, tags_json, scheduled_at, "
            "idempotency_key, batch_index, fingerprint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        status, payload = answer(ids)
        body = json.dumps(payload, separators=(",", ":"))
        if idempotency_key is not None:
            conn.execute(
                "UPDATE idempotency SET state = 'done', status = ?, body = ?, updated = ? "
                "WHERE api_key_sha256 = ? AND key = ?",
                (status, body, now, api_key_sha256, idempotency_key),
            )
        return Delivered(status, body)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


# -- the inbox -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveredEmail:
    id: str
    from_: str
    to: list[str]
    cc: list[str] | None
    bcc: list[str] | None
    reply_to: list[str] | None
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str] | None
    tags: list[dict[str, str]] | None
    idempotency_key: str | None
    batch_index: int | None
    created_at: datetime
    fingerprint: str
    times_delivered: int
    """How many delivered emails are this same message (1 unless something sent it twice)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.from_,
            "to": self.to,
            "cc": self.cc,
            "bcc": self.bcc,
            "reply_to": self.reply_to,
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "headers": self.headers,
            "tags": self.tags,
            "idempotency_key": self.idempotency_key,
            "batch_index": self.batch_index,
            "created_at": self.created_at.isoformat(),
            "fingerprint": self.fingerprint,
            "times_delivered": self.times_delivered,
        }


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def inbox_entry(row: sqlite3.Row) -> DeliveredEmail:
    return DeliveredEmail(
        id=row["id"],
        from_=row["from_addr"],
        to=json.loads(row["to_json"]),
        cc=_loads(row["cc_json"]),
        bcc=_loads(row["bcc_json"]),
        reply_to=_loads(row["reply_to_json"]),
        subject=row["subject"],
        html=row["html"],
        text=row["text"],
        headers=_loads(row["headers_json"]),
        tags=_loads(row["tags_json"]),
        idempotency_key=row["idempotency_key"],
        batch_index=row["batch_index"],
        created_at=rfc3339.from_us(row["created_us"]),
        fingerprint=row["fingerprint"],
        times_delivered=row["times"],
    )


def inbox(store: StateStore, *, to: str | None = None) -> list[DeliveredEmail]:
    rows = (
        store.connection()
        .execute(
            "SELECT e.*, (SELECT COUNT(*) FROM emails d WHERE d.fingerprint = e.fingerprint) AS times "
            "FROM emails e ORDER BY e.seq"
        )
        .fetchall()
    )
    entries = [inbox_entry(r) for r in rows]
    if to is not None:
        entries = [e for e in entries if to in e.to or to in (e.cc or []) or to in (e.bcc or [])]
    return entries


def counts_by_idempotency_key(store: StateStore) -> dict[str, int]:
    rows = (
        store.connection()
        .execute(
            "SELECT idempotency_key, COUNT(*) FROM emails WHERE idempotency_key IS NOT NULL "
            "GROUP BY idempotency_key"
        )
        .fetchall()
    )
    return {r[0]: r[1] for r in rows}


def counts_by_message(store: StateStore) -> dict[str, int]:
    rows = (
        store.connection()
        .execute("SELECT fingerprint, COUNT(*) FROM emails GROUP BY fingerprint")
        .fetchall()
    )
    return {r[0]: r[1] for r in rows}


def idempotency_entries(store: StateStore, key: str) -> list[dict[str, Any]]:
    rows = (
        store.connection()
        .execute(
            "SELECT state, status, replays, created, updated FROM idempotency WHERE key = ?",
            (key,),
        )
        .fetchall()
    )
    return [dict(zip(r.keys(), tuple(r), strict=True)) for r in rows]


def email_row(store: StateStore, email_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = (
        store.connection()
        .execute("SELECT *, 1 AS times FROM emails WHERE id = ?", (email_id,))
        .fetchone()
    )
    return row
