"""Email queue drain: ``process_email_queue`` against the TypeScript package's one-POST-per-email loop.

The queue: ``n`` pending emails (the demo data's Spanish templates, one recipient each, due now,
sender left to ``EMAIL_FROM``). The emulator answers 50 ms late and holds every API key to
Resend's 5 requests per second (every run gets a key of its own). At 100 emails per batch request
that bounds any client at 500 emails per second; the TypeScript package's one email per request, at 5.

End state, checked after every run: every row ``sent`` (with its ``sent_at``), and the emulator's
inbox holds exactly ``n`` emails, one per row, none twice. Ours also leaves one ``email_deliveries``
row per email, ``sent`` and released; the TypeScript package has no such table to write.

The rows are keyed by the jobs' names for the platform's columns, so the same code fills the
stand-in and the Drizzle-made schema (``to``, uuid ids, an enum status; through the reflected
tables).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.demo import EMAILS, FIRST_NAMES
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import EmailStatus
from alianza_jobs.defs.emails.queue_sql import DELIVERIES
from alianza_jobs.emulators import ResendEmulator
from benchmarks.harness import DEFAULT_SCHEMA, DRIZZLE_SCHEMA, EmulatorServer, PlatformSchema
from benchmarks.workloads.base import Case, EmulatorSettings, QueueWorkload, Target

RATE_LIMIT = 5  # Resend: requests per second per key
BATCH = 100  # Resend: emails per batch request
BOUND = RATE_LIMIT * BATCH
CHUNK = 5_000


class EmailDrain(QueueWorkload):
    name = "email_queue"
    title = "Email queue drain"
    job = "process_email_queue"
    data = (
        "Pending emails, one recipient each, all due. Every row must end `sent` and the "
        "emulator's inbox hold each email exactly once. Resend's limit bounds any client at "
        f"{RATE_LIMIT} requests/s: {BOUND} emails/s in batches of {BATCH}, {RATE_LIMIT}/s one by one."
    )
    emulator = EmulatorSettings(latency_ms=50, resend_rate_limit=RATE_LIMIT)
    schemas = (DEFAULT_SCHEMA.name, DRIZZLE_SCHEMA.name)

    def cases(self, smoke: bool) -> list[Case]:
        if smoke:
            return [Case("baseline", 10), Case("ours", 150)]
        return [Case("baseline", 250), Case("ours", 500), Case("ours", 5_000)]

    async def populate(
        self, engine: AsyncEngine, size: int, smoke: bool, schema: PlatformSchema
    ) -> dict[str, Any]:
        tables = await schema.tables(engine)
        queue = schema.insert_into(tables, "email_queue")
        pending = tables.status("email_queue", EmailStatus.PENDING.value)
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        async with engine.begin() as conn:
            for i in range(size):
                subject, html, text = EMAILS[i % len(EMAILS)]
                first = FIRST_NAMES[i % len(FIRST_NAMES)]
                due = now - timedelta(seconds=1 + i % 1800)
                rows.append(
                    {
                        "to_address": f"user{i}@example.com",
                        "from_address": None,
                        "subject": f"{subject.format(first=first)} #{i}",
                        "html": html.format(first=first),
                        "text": text.format(first=first),
                        # No delivery row yet: due now, as a freshly enqueued email is.
                        "status": pending,
                        "created_at": due,
                    }
                )
                if len(rows) == CHUNK:
                    await conn.execute(insert(queue), rows)
                    rows = []
            if rows:
                await conn.execute(insert(queue), rows)
        return {"emails": size}

    def prepare(
        self, server: EmulatorServer | None, size: int, expected: Mapping[str, Any]
    ) -> None:
        """An empty inbox, no idempotency keys, no rate-limit history, zeroed counters."""
        assert server is not None
        ResendEmulator(server.state_dir).reset(keep_config=True)

    def api_calls(self, server: EmulatorServer | None) -> tuple[int | None, int | None]:
        assert server is not None
        resend = ResendEmulator(server.state_dir)
        return resend.calls(service="resend"), resend.calls(service="resend", status=429)

    def rows(self, case: Case, expected: Mapping[str, Any]) -> int:
        return int(expected["emails"])

    def verify(
        self,
        database_url: str,
        server: EmulatorServer | None,
        case: Case,
        expected: Mapping[str, Any],
        counters: Mapping[str, Any],
        schema: PlatformSchema,
    ) -> dict[str, Any]:
        assert server is not None
        n = int(expected["emails"])
        by_status, deliveries = asyncio.run(_end_state(database_url, schema))
        assert by_status == {EmailStatus.SENT.value: n}, f"rows by status {by_status}"
        want_deliveries = {EmailStatus.SENT.value: n} if case.impl == "ours" else {}
        assert deliveries == want_deliveries, f"deliveries by status {deliveries}"
        resend = ResendEmulator(server.state_dir)
        delivered = resend.count()
        assert delivered == n, f"{delivered} emails delivered, expected {n}"
        duplicates = len(resend.duplicates())
        assert duplicates == 0, f"{duplicates} emails delivered twice"
        return {"rows_by_status": by_status, "deliveries": deliveries, "delivered": delivered}

    def targets(self, backend: str, summaries: Sequence[Mapping[str, Any]]) -> list[Target]:
        out: list[Target] = []
        for summary in summaries:
            if summary["case"] != "ours":
                continue
            size = f"{summary['size']:,} emails"
            out.append(
                Target(
                    f"email queue: emails/s at {size} vs 80% of Resend's bound ({BOUND}/s)",
                    backend,
                    summary["median"].get("rows_per_s"),
                    0.8 * BOUND,
                    ">=",
                    "emails/s",
                )
            )
            out.append(
                Target(
                    f"email queue: throughput vs baseline at {size}",
                    backend,
                    summary.get("ratio_to_baseline"),
                    50.0,
                    ">=",
                    "x",
                )
            )
        return out


async def _end_state(url: str, schema: PlatformSchema) -> tuple[dict[str, int], dict[str, int]]:
    """Platform rows by status (the platform's values, its value for sent as ``sent``), and our
    deliveries by status (leased ones counted again apart: nothing may stay leased)."""
    engine = create_engine(url)
    try:
        tables = await schema.tables(engine)
        emails = tables.email_queue
        sent = tables.status("email_queue", EmailStatus.SENT.value)
        async with engine.connect() as conn:
            result = await conn.execute(
                select(emails.c.status, func.count()).group_by(emails.c.status)
            )
            by_status = {
                EmailStatus.SENT.value if status == sent else str(status): int(count)
                for status, count in result
            }
            unstamped = await conn.scalar(
                select(func.count())
                .select_from(emails)
                .where(emails.c.status == sent, emails.c.sent_at.is_(None))
            )
            result = await conn.execute(
                select(DELIVERIES.c.status, func.count()).group_by(DELIVERIES.c.status)
            )
            deliveries = {str(status): int(count) for status, count in result}
            leased = await conn.scalar(
                select(func.count())
                .select_from(DELIVERIES)
                .where(DELIVERIES.c.locked_by.is_not(None))
            )
        if unstamped:
            by_status["sent_without_sent_at"] = int(unstamped)
        if leased:
            deliveries["leased"] = int(leased)
        return by_status, deliveries
    finally:
        await engine.dispose()
