"""The Resend emulator's Python API: :class:`ResendEmulator` reads what was delivered and how often,
clears the inbox and configures the Resend side, from any process sharing the state directory.
"""

from __future__ import annotations

from typing import Any

from alianza_jobs.emulators.config import ResendSettings
from alianza_jobs.emulators.control import EmulatorControl
from alianza_jobs.emulators.resend_store import (
    DeliveredEmail,
    counts_by_idempotency_key,
    counts_by_message,
    idempotency_entries,
    inbox,
)
from alianza_jobs.emulators.resend_validation import validate_email

# Importable from here too: the email job's tests check what it prepares against these rules.
__all__ = ["DeliveredEmail", "ResendEmulator", "validate_email"]


class ResendEmulator(EmulatorControl):
    """The Resend side from any process: what was delivered, how often, and its settings."""

    def inbox(self, *, to: str | None = None) -> list[DeliveredEmail]:
        """Every delivered email in delivery order (optionally only those addressed to ``to``)."""
        return inbox(self.store, to=to)

    def count(self) -> int:
        row = self.store.connection().execute("SELECT COUNT(*) FROM emails").fetchone()
        return int(row[0])

    def counts_by_idempotency_key(self) -> dict[str, int]:
        """Emails delivered under each key (a batch key counts its emails; replays add nothing)."""
        return counts_by_idempotency_key(self.store)

    def counts_by_message(self) -> dict[str, int]:
        """Deliveries per distinct message (fingerprint): more than 1 means a duplicate."""
        return counts_by_message(self.store)

    def duplicates(self) -> list[DeliveredEmail]:
        return [e for e in self.inbox() if e.times_delivered > 1]

    def idempotency(self, key: str) -> list[dict[str, Any]]:
        """The stored entries for ``key`` (state ``in_flight``/``done``, status, replays)."""
        return idempotency_entries(self.store, key)

    def clear_inbox(self) -> None:
        with self.store.write() as conn:
            conn.execute("DELETE FROM emails")
            conn.execute("DELETE FROM idempotency")

    def configure(self, **settings: Any) -> ResendSettings:
        """Change Resend settings for every process (``rate_limit_requests=``, ``daily_quota=``)."""
        return self.store.update_config({"resend": settings}).resend
