"""Run config of ``process_email_queue``: batch size, attempts, backoff, lease and time budget."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from pydantic import Field

from alianza_jobs.clients.resend import MAX_BATCH
from alianza_jobs.defs.emails.rules import MAX_EMAIL_BYTES


class EmailQueueConfig(dg.Config):
    batch_size: int = Field(
        default=MAX_BATCH, ge=1, le=MAX_BATCH, description="Rows per Resend batch request."
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Sends with an unknown outcome before a row goes dead."
    )
    backoff_base_s: float = Field(
        default=30.0, ge=0, description="First retry delay; doubles with each attempt."
    )
    backoff_max_s: float = Field(default=3600.0, ge=0, description="Cap on the retry delay.")
    lease_s: float = Field(
        default=180.0,
        gt=0,
        description="Claim lease; longer than the 60 s timeout so a live run never loses rows.",
    )
    time_budget_s: float = Field(
        default=40.0,
        gt=0,
        description="Stop claiming new batches after this long (headroom under the timeout).",
    )
    concurrency: int = Field(
        default=2, ge=1, le=8, description="Batches in flight at once (claim/write overlap sends)."
    )
    max_request_bytes: int = Field(
        default=MAX_EMAIL_BYTES,
        ge=MAX_EMAIL_BYTES,
        description="Largest batch request body; a claim is split into several requests above it.",
    )

    def backoff(self, attempts: int, rand: float) -> timedelta:
        """Delay before the next try after ``attempts`` failed ones: equal jitter, capped."""
        step = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** max(0, attempts - 1))
        return timedelta(seconds=step / 2 + rand * step / 2)
