"""The Stream emulator's webhook: the account's one registration and the deliveries it gets.

As on Cloudflare, a video is notified when it reaches ``ready`` or ``error``: its body is the video
exactly as ``GET /accounts/{account_id}/stream/{uid}`` renders it, POSTed as JSON to the
registered ``notificationUrl`` with ``Webhook-Signature: time=<unix>,sig1=<hex>`` (HMAC-SHA256 of
``"{time}.{raw body}"`` keyed with the secret). Only videos finishing at or after the registration
are notified, so registering on a state full of old ready videos does not flood the receiver. A
refused delivery (non-2xx, no answer) is retried ``webhook_retry_s`` emulated seconds later,
doubling each time, up to ``webhook_max_attempts`` attempts in all.

Deliveries are rows (``webhook_deliveries``) like the rest of the state; :func:`dispatch_due` makes
one pass over what is due, and :func:`run_dispatcher` (what ``alianza-jobs emulate`` runs beside
its server) repeats it. A pass claims its deliveries before POSTing them, so two dispatchers on one
state directory do not send the same delivery twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.state import Clock, StateStore

SIGNATURE_HEADER = "Webhook-Signature"
MAX_CONCURRENT_DELIVERIES = 16
DELIVERY_TIMEOUT_S = 5.0
NO_RESPONSE_STATUS = 0
"""``last_status`` of an attempt that got no answer (connection refused, reset, timeout)."""
CLAIM_LEASE_S = 2 * DELIVERY_TIMEOUT_S
"""Emulated seconds a claimed delivery is left to its dispatcher before another may take it."""
MAX_RETRY_DELAY_S = 365 * 86_400.0
"""Bounds the doubling, so that no setting can push a retry time out of SQLite's integer range."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Webhook:
    notification_url: str
    account_id: str
    modified_us: int
    secret: str = field(repr=False)

    def public(self, *, include_secret: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "notification_url": self.notification_url,
            "account_id": self.account_id,
            "modified": rfc3339.format_us(self.modified_us),
        }
        if include_secret:
            out["secret"] = self.secret
        return out

    def wire(self) -> dict[str, Any]:
        """The ``result`` of the webhook routes, as Cloudflare spells it."""
        return {
            "notificationUrl": self.notification_url,
            "modified": rfc3339.format_us(self.modified_us),
            "secret": self.secret,
        }


# -- state operations (blocking; run in a worker thread from the ASGI side) -------------------------


def _webhook_from(row: sqlite3.Row | None) -> Webhook | None:
    if row is None:
        return None
    return Webhook(
        notification_url=row["notification_url"],
        account_id=row["account_id"],
        modified_us=row["modified_us"],
        secret=row["secret"],
    )


def set_webhook(
    store: StateStore, notification_url: str, *, account_id: str, secret: str, modified_us: int
) -> Webhook:
    """Register (or replace) the webhook; videos finishing from ``modified_us`` on are notified."""
    with store.write() as conn:
        conn.execute(
            "INSERT INTO webhook (id, notification_url, secret, account_id, modified_us) "
            "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "notification_url = excluded.notification_url, secret = excluded.secret, "
            "account_id = excluded.account_id, modified_us = excluded.modified_us",
            (notification_url, secret, account_id, modified_us),
        )
    return Webhook(notification_url, account_id, modified_us, secret)


def get_webhook(store: StateStore) -> Webhook | None:
    conn = store.connection()
    return _webhook_from(conn.execute("SELECT * FROM webhook WHERE id = 1").fetchone())


def delete_webhook(store: StateStore) -> bool:
    """Remove the webhook and forget its deliveries; False when none was registered."""
    with store.write() as conn:
        deleted = conn.execute("DELETE FROM webhook WHERE id = 1").rowcount > 0
        conn.execute("DELETE FROM webhook_deliveries")
    return deleted


# A delivery row left from an earlier timeline of the same uid (the video was registered again)
# does not count: the new outcome is a new notification.
_DUE = """
SELECT v.*,
       CASE WHEN d.final_us = v.final_us THEN d.attempts ELSE 0 END AS attempts
FROM videos v LEFT JOIN webhook_deliveries d ON d.uid = v.uid
WHERE v.deleted_us IS NULL
  AND v.outcome IN ('ready', 'error')
  AND v.final_us <= :now AND v.final_us >= :since
  AND (
    d.uid IS NULL
    OR d.final_us != v.final_us
    OR (d.delivered_us IS NULL AND d.attempts < :max_attempts AND d.next_attempt_us <= :now)
  )
ORDER BY v.final_us, v.uid
"""


def _due_rows(
    conn: sqlite3.Connection, hook: Webhook, now_us: int, max_attempts: int
) -> list[sqlite3.Row]:
    params = {"now": now_us, "since": hook.modified_us, "max_attempts": max_attempts}
    return conn.execute(_DUE, params).fetchall()


def due_deliveries(store: StateStore, now_us: int) -> list[sqlite3.Row]:
    """The videos whose outcome is to be POSTed at ``now_us``, by ``final_us``: each is a videos
    row plus ``attempts`` (made so far). Empty without a webhook or with webhooks disabled."""
    config = store.config()
    if not config.stream.webhooks_enabled:
        return []
    with store.read() as conn:
        hook = _webhook_from(conn.execute("SELECT * FROM webhook WHERE id = 1").fetchone())
        if hook is None:
            return []
        return _due_rows(conn, hook, now_us, config.stream.webhook_max_attempts)


def claim_due(
    store: StateStore, now_us: int, *, max_attempts: int
) -> tuple[Webhook, list[sqlite3.Row]] | None:
    """The webhook and the due deliveries, each claimed for :data:`CLAIM_LEASE_S` so no other
    dispatcher takes it meanwhile; None without a webhook."""
    lease_until = now_us + round(CLAIM_LEASE_S * 1e6)
    with store.write() as conn:
        hook = _webhook_from(conn.execute("SELECT * FROM webhook WHERE id = 1").fetchone())
        if hook is None:
            return None
        rows = _due_rows(conn, hook, now_us, max_attempts)
        conn.executemany(
            "INSERT INTO webhook_deliveries (uid, final_us, attempts, next_attempt_us) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET "
            "last_status = CASE WHEN final_us = excluded.final_us THEN last_status END, "
            "final_us = excluded.final_us, attempts = excluded.attempts, "
            "next_attempt_us = excluded.next_attempt_us, delivered_us = NULL",
            [(r["uid"], r["final_us"], r["attempts"], lease_until) for r in rows],
        )
    return hook, rows


def record_attempt(
    store: StateStore,
    uid: str,
    final_us: int,
    *,
    attempts: int,
    status: int,
    sent_us: int,
    retry_s: float,
) -> None:
    """Store the outcome of attempt number ``attempts`` (from 1), sent at ``sent_us``."""
    delivered = 200 <= status <= 299
    delay_s = min(retry_s * 2.0 ** min(attempts - 1, 64), MAX_RETRY_DELAY_S)
    delay_us = 0 if delivered else round(delay_s * 1e6)
    with store.write() as conn:
        # Guarded by final_us: a video registered again during the POST starts over instead.
        conn.execute(
            "UPDATE webhook_deliveries SET attempts = ?, last_status = ?, delivered_us = ?, "
            "next_attempt_us = ? WHERE uid = ? AND final_us = ?",
            (
                attempts,
                status,
                sent_us if delivered else None,
                sent_us + delay_us,
                uid,
                final_us,
            ),
        )


def deliveries(store: StateStore) -> list[dict[str, Any]]:
    rows = (
        store.connection()
        .execute(
            "SELECT uid, final_us, attempts, next_attempt_us, delivered_us, last_status "
            "FROM webhook_deliveries ORDER BY final_us, uid"
        )
        .fetchall()
    )
    return [{k: r[k] for k in r.keys()} for r in rows]  # noqa: SIM118 - sqlite3.Row


# -- delivery ---------------------------------------------------------------------------------------


def signature_header(raw_body: bytes, secret: str, timestamp: int) -> str:
    """``time=<timestamp>,sig1=<HMAC-SHA256 hex of "{timestamp}.{raw body}">``.

    Computed here rather than borrowed from the client's verifier: the emulators import nothing
    outside themselves, and the tests check these headers with that verifier, so a mistake on
    either side shows.
    """
    message = f"{timestamp}.".encode() + raw_body
    sig = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"time={timestamp},sig1={sig}"


async def _post(
    client: httpx.AsyncClient, hook: Webhook, raw_body: bytes, timestamp: int, uid: str
) -> int:
    """The status the receiver answered, or :data:`NO_RESPONSE_STATUS`."""
    headers = {
        "content-type": "application/json",
        SIGNATURE_HEADER: signature_header(raw_body, hook.secret, timestamp),
    }
    try:
        # asyncio's bound as well as httpx's: ASGITransport ignores httpx timeouts.
        async with asyncio.timeout(DELIVERY_TIMEOUT_S):
            response = await client.post(
                hook.notification_url, content=raw_body, headers=headers, timeout=DELIVERY_TIMEOUT_S
            )
    except Exception as exc:  # whatever the receiver (or the way to it) does is a failed attempt
        # The type only: the URL may embed credentials, and some errors quote it.
        log.info("Stream webhook delivery of %s got no answer: %s", uid, type(exc).__name__)
        return NO_RESPONSE_STATUS
    return response.status_code


# What a lost delivery records: Stream saw a success (a proxy answered, then dropped it).
LOST_STATUS = 202


def lost_on_the_way(uid: str, rate: float) -> bool:
    """Whether ``webhook_drop_rate`` loses this video's delivery: by the uid's hash, stable."""
    if rate <= 0:
        return False
    draw = int.from_bytes(hashlib.sha256(f"webhook-drop:{uid}".encode()).digest()[:8], "big")
    return draw / 2**64 < rate


async def dispatch_due(
    store: StateStore, client: httpx.AsyncClient, *, wall_clock: Clock = time.time
) -> int:
    """One pass: POST every due delivery (up to 16 at once); returns how many were attempted.

    The body is rendered at the emulated now; the signature's time is ``wall_clock()``, because
    the receiver checks it against its own clock, not the emulator's.
    """
    # stream_routes imports this module for the webhook routes; render_video is read at call time.
    from alianza_jobs.emulators.stream_routes import render_video

    config = await store.call(store.config)
    settings = config.stream
    if not settings.webhooks_enabled:
        return 0
    now_us = rfc3339.to_us(store.now(config))
    claimed = await store.call(claim_due, store, now_us, max_attempts=settings.webhook_max_attempts)
    if claimed is None:
        return 0
    hook, rows = claimed
    semaphore = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)

    async def deliver(row: sqlite3.Row) -> None:
        body = json.dumps(render_video(row, now_us, hook.account_id), separators=(",", ":"))
        if lost_on_the_way(row["uid"], settings.webhook_drop_rate):
            status = LOST_STATUS
        else:
            async with semaphore:
                status = await _post(client, hook, body.encode(), int(wall_clock()), row["uid"])
        attempts = int(row["attempts"]) + 1
        await store.call(
            record_attempt,
            store,
            row["uid"],
            row["final_us"],
            attempts=attempts,
            status=status,
            sent_us=now_us,
            retry_s=settings.webhook_retry_s,
        )
        if not 200 <= status <= 299 and attempts >= settings.webhook_max_attempts:
            log.warning(
                "Stream webhook delivery of %s abandoned after %d attempts (last status %d)",
                row["uid"],
                attempts,
                status,
            )

    # Every delivery runs to its end before a failure is raised: none is left running unowned.
    outcomes = await asyncio.gather(*(deliver(row) for row in rows), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return len(rows)


async def run_dispatcher(
    store: StateStore,
    *,
    interval_s: float = 0.5,
    client: httpx.AsyncClient | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """:func:`dispatch_due` every ``interval_s`` until ``stop`` is set (or the task cancelled).

    A pass that fails is logged and the loop goes on: a locked state file or a bug in one pass
    must not end deliveries for the rest of the server's life.
    """
    if stop is None:
        stop = asyncio.Event()
    http = client
    if http is None:
        http = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S, follow_redirects=False)
    try:
        while not stop.is_set():
            try:
                await dispatch_due(store, http)
            except Exception as exc:  # see the docstring
                # The exception only: the webhook's secret and URL stay out of the log.
                log.warning("Stream webhook dispatch pass failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
    finally:
        if client is None:
            await http.aclose()
