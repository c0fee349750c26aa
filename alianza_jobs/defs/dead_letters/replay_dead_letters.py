"""``replay_dead_letters``: put dead items back into their queue, by hand, after the cause is fixed.

Run config: ``source`` (``email_queue`` or ``streamings``), ``ids`` (dead-letter ids; empty means
every unreplayed one of that source) and ``dry_run``. Each page of dead letters is one transaction:
the items still dead go back to their queue as due and their letters get ``replayed_at``; letters
already replayed, unknown, of the other source, or whose item is gone or no longer dead are
reported and left unmarked. What an email keeps (its idempotency key) and why is in
``docs/dead_letters.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import dagster as dg
from dagster import AssetMaterialization, OpExecutionContext
from pydantic import Field
from sqlalchemy import ColumnElement, Table, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import (
    DeadLetter,
    DeadLetterSource,
    EmailDelivery,
    EmailStatus,
    StreamingStatus,
    VideoCheck,
)
from alianza_jobs.db.platform_tables import PlatformTables, keyed_by
from alianza_jobs.db.types import PlatformKey, utcnow
from alianza_jobs.logs import TaskLogger, get_logger
from alianza_jobs.platform.task import TaskReport, TaskSpec
from alianza_jobs.resources import Database

TASK = TaskSpec(
    name="replay_dead_letters",
    description=(
        "Puts dead-lettered emails or videos back into their queue as due and marks the dead "
        "letters replayed (run config: source, ids, dry_run)."
    ),
    cron=None,
    timeout=timedelta(minutes=5),
    retry=None,
    # Which table is materialized depends on the run's `source`: the op reports it itself.
    assets=(),
)

PAGE = 1000
PREVIEW = 50
Source = Literal["email_queue", "streamings"]


class ReplayConfig(dg.Config):
    source: Source = Field(description="Which queue's dead letters: email_queue or streamings.")
    ids: list[int] = Field(
        default=[],
        description="Dead-letter ids to replay; empty means every unreplayed one of the source.",
    )
    dry_run: bool = Field(
        default=False, description="Report what would be replayed; change nothing."
    )


EMAIL_DELIVERIES: Table = EmailDelivery.__table__  # type: ignore[assignment]
VIDEO_CHECKS: Table = VideoCheck.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Queue:
    """How one source's items are found dead and put back: the platform ``table`` holds the
    item, ``checks`` (the jobs' bookkeeping, keyed by ``key``) its state, attempts and lease."""

    table: Table
    dead: ColumnElement[bool]
    requeue: dict[str, Any]
    checks: Table
    key: str
    checks_requeue: dict[str, Any]


def queue_for(source: str, tables: PlatformTables) -> Queue:
    if source == DeadLetterSource.EMAIL_QUEUE.value:
        emails = tables.email_queue
        deliveries = EMAIL_DELIVERIES.c
        return Queue(
            emails,
            and_(
                # Dead is our state, which the platform's status may not hold (`failed` there).
                exists().where(
                    keyed_by(emails, deliveries.email_id),
                    deliveries.status == EmailStatus.DEAD.value,
                ),
                # And the platform's row must still say so: one it has since set otherwise
                # (sent, say) would otherwise be overwritten to pending and sent again.
                emails.c.status == tables.status("email_queue", EmailStatus.DEAD.value),
            ),
            {"status": tables.status("email_queue", EmailStatus.PENDING.value)},
            EMAIL_DELIVERIES,
            "email_id",
            # The key stays: a replayed group is re-sent under it, so Resend answers from its
            # cache if the first send got through after all.
            {"status": EmailStatus.PENDING.value, "attempts": 0},
        )
    s = tables.streamings
    dead = [s.c.status == tables.status("streamings", StreamingStatus.ERROR.value)]
    if "deleted_at" in s.c:
        dead.append(s.c.deleted_at.is_(None))
    return Queue(
        s,
        and_(*dead),
        {"status": tables.status("streamings", StreamingStatus.QUEUED.value)},
        VIDEO_CHECKS,
        "streaming_id",
        {"attempts": 0, "error_reason": None, "checked_at": None},
    )


def _is_key(table: Table, item: str, conn: AsyncConnection) -> bool:
    key_type = table.c.id.type
    if not isinstance(key_type, PlatformKey):
        return True
    try:
        key_type.process_bind_param(item, conn.dialect)
    except ValueError:
        return False
    return True


@dataclass
class Outcome:
    report: TaskReport = field(default_factory=TaskReport)
    letters: list[int] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, why: str, letter_ids: Sequence[int]) -> None:
        if letter_ids:
            self.skipped.setdefault(why, []).extend(letter_ids)
            self.report.add(f"skipped_{why}", len(letter_ids))


async def check_requested(conn: AsyncConnection, config: ReplayConfig, outcome: Outcome) -> None:
    """Requested ids that are unknown, of the other source, or already replayed."""
    wanted = sorted(set(config.ids))
    found: dict[int, tuple[str, datetime | None]] = {}
    for start in range(0, len(wanted), PAGE):
        chunk = wanted[start : start + PAGE]
        rows = await conn.execute(
            select(DeadLetter.id, DeadLetter.source, DeadLetter.replayed_at).where(
                DeadLetter.id.in_(chunk)
            )
        )
        found.update({r.id: (r.source, r.replayed_at) for r in rows})
    outcome.skip("not_found", [i for i in wanted if i not in found])
    outcome.skip("other_source", [i for i, (s, _) in found.items() if s != config.source])
    outcome.skip(
        "already_replayed",
        [i for i, (s, at) in found.items() if s == config.source and at is not None],
    )


def _page_query(config: ReplayConfig, *, after: int, among: Sequence[int] | None) -> Any:
    """The next page of unreplayed letters: after ``after`` by id, or among requested ids."""
    stmt = (
        select(DeadLetter.id, DeadLetter.source_id)
        .where(DeadLetter.source == config.source, DeadLetter.replayed_at.is_(None))
        .order_by(DeadLetter.id)
    )
    if among is not None:
        return stmt.where(DeadLetter.id.in_(among))
    return stmt.where(DeadLetter.id > after).limit(PAGE)


async def replay_page(
    conn: AsyncConnection,
    queue: Queue,
    letters: Sequence[tuple[int, str]],
    *,
    now: datetime,
    dry_run: bool,
    outcome: Outcome,
) -> None:
    """Requeue the dead items of one page of (letter id, item id) and mark their letters."""
    table = queue.table
    item_ids = sorted({item for _, item in letters})
    # A source_id the platform's key cannot hold (an integer id from before a move to uuid keys,
    # say) names no row; bound, it would fail the whole run: it is reported missing instead.
    keys = [i for i in item_ids if _is_key(table, i, conn)]
    present = await conn.execute(
        select(table.c.id, queue.dead.label("is_dead")).where(table.c.id.in_(keys))
    )
    state = {str(r.id): bool(r.is_dead) for r in present}
    dead_items = [i for i in item_ids if state.get(i)]
    if dead_items and not dry_run:
        # The status check again in the UPDATE: an item requeued by someone else meanwhile stays.
        result = await conn.execute(
            update(table)
            .where(table.c.id.in_(dead_items), queue.dead)
            .values(queue.requeue)
            .returning(table.c.id)
        )
        requeued = set(result.scalars().all())
        if requeued:
            due = {"next_attempt_at": now} if "next_attempt_at" in queue.checks.c else {}
            await conn.execute(
                update(queue.checks)
                .where(queue.checks.c[queue.key].in_(sorted(requeued)))
                .values(
                    **queue.checks_requeue, **due, locked_until=None, locked_by=None, updated_at=now
                )
            )
    else:
        requeued = set(dead_items)
    letter_ids = [lid for lid, item in letters if item in requeued]
    if letter_ids and not dry_run:
        await conn.execute(
            update(DeadLetter)
            .where(DeadLetter.id.in_(letter_ids), DeadLetter.replayed_at.is_(None))
            .values(replayed_at=now, updated_at=now)
        )
    outcome.letters.extend(letter_ids)
    outcome.items.extend(sorted(requeued))
    outcome.report.add("dead_letters_replayed", len(letter_ids))
    outcome.report.add("items_requeued", len(requeued))
    outcome.skip("missing", [lid for lid, item in letters if item not in state])
    outcome.skip(
        "not_dead", [lid for lid, item in letters if item in state and item not in requeued]
    )


async def replay(
    engine: AsyncEngine, tables: PlatformTables, config: ReplayConfig, *, log: TaskLogger
) -> Outcome:
    queue = queue_for(config.source, tables)
    outcome = Outcome()
    outcome.report.counts.update({"dead_letters_replayed": 0, "items_requeued": 0})
    if config.ids:
        async with read_only(engine).connect() as conn:
            await check_requested(conn, config, outcome)
    # Requested ids go a page at a time too (Postgres takes at most 65,535 bind parameters).
    wanted = sorted(set(config.ids))
    chunks = [wanted[i : i + PAGE] for i in range(0, len(wanted), PAGE)]
    after = 0
    pages = 0
    while True:
        among: Sequence[int] | None = None
        if config.ids:
            if pages >= len(chunks):
                break
            among = chunks[pages]
        now = utcnow()
        # One transaction per page: the items and their letters change together or not at all.
        # A dry run only reads (read_only: on SQLite it does not take the write lock).
        session = read_only(engine).connect() if config.dry_run else engine.begin()
        async with session as conn:
            query = _page_query(config, after=after, among=among)
            letters = [(r.id, r.source_id) for r in await conn.execute(query)]
            if letters:
                await replay_page(
                    conn, queue, letters, now=now, dry_run=config.dry_run, outcome=outcome
                )
        pages += 1
        if letters:
            after = letters[-1][0]
            log.info(
                "Dry run: checked a page" if config.dry_run else "Replayed a page of dead letters",
                page=pages,
                letters=len(letters),
                total_replayed=outcome.report.counts["dead_letters_replayed"],
            )
        if among is None and len(letters) < PAGE:
            break
    return outcome


@TASK.op
async def requeue_dead_letters(
    context: OpExecutionContext, config: ReplayConfig, database: Database
) -> TaskReport:
    log = get_logger(source=config.source, dry_run=config.dry_run)
    started = time.perf_counter()
    async with database.engine() as engine:
        outcome = await replay(engine, await database.platform(engine), config, log=log)
    report = outcome.report
    report.metadata.update(
        {
            "source": config.source,
            "dry_run": config.dry_run,
            "requested_ids": len(config.ids),
            "dead_letter_ids": _preview(outcome.letters),
            "item_ids": _preview(outcome.items),
            **{f"skipped_{why}_ids": _preview(ids) for why, ids in outcome.skipped.items()},
        }
    )
    for why, ids in outcome.skipped.items():
        log.warning("Dead letters not replayed", why=why, count=len(ids), ids=_preview(ids))
    log.info(
        "Would replay dead letters" if config.dry_run else "Replayed dead letters",
        **report.counts,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    if not config.dry_run:
        context.log_event(
            AssetMaterialization(
                asset_key=config.source,
                description="Dead items put back by replay_dead_letters",
                metadata={**report.counts, "item_ids": _preview(outcome.items)},
            )
        )
    return report


def _preview(ids: Sequence[int] | Sequence[str]) -> str:
    ordered = sorted(ids)
    text = ",".join(str(i) for i in ordered[:PREVIEW])
    return text + (f",... (+{len(ordered) - PREVIEW})" if len(ordered) > PREVIEW else "")


job = TASK.job(requeue_dead_letters)

__all__ = ["TASK", "ReplayConfig", "job", "replay", "requeue_dead_letters"]
