"""``process_email_queue``: the seed's ``processEmailQueue``, delivering every email exactly once.

The seed read 50 pending rows and sent them one by one; a crash between "sent" and "mark as sent"
sent that email again on the next tick, and a failure marked it failed for ever. Here every due row
goes out in Resend batches of up to 100, exactly once, and the queue drains a backlog at the speed
Resend's rate limit allows.

**Exactly once.** Resend keeps an ``Idempotency-Key`` for 24 hours and answers a repeat of the same
key and body from its cache, without sending again. Each batch's key is derived from what is sent
(:func:`~alianza_jobs.clients.resend.idempotency_key_for`, namespaced by the row ids so two
intended emails with equal content are not taken for one) and stamped, with ``status='sending'``,
on every row of the batch in a committed write *before* the request goes out (the claim itself only
takes the lease, so rows given back before that point are exactly as they were, and ``sending``
always means "a key is stamped; the request may be out"). Whatever happens next, the rows know
their key:

* an answer arrives: each row is settled from it (``sent`` + ``provider_message_id``, or ``dead``);
* the outcome is unknown (5xx, timeout, dropped connection: the request may have been delivered),
  the run crashed, or it was cancelled by its timeout: the rows keep their key. They form a *group*,
  and the next claim takes groups back first, whole (every unfinished row with that key), and sends
  exactly the same batch under the same key: Resend answers from its cache if the first one got
  through, or sends it now if not. Never twice.

**Statuses.** ``pending`` (new) → ``sending`` (key stamped, request about to go or gone) →
``sent`` | ``failed`` (retryable; ``next_attempt_at`` = now + exponential backoff with jitter,
capped; ``attempts`` + 1) | ``dead`` (+ a ``dead_letters`` row). Dead means: the row broke a rule of
:mod:`~alianza_jobs.defs.emails.rules` (never sent), Resend refused it (422 or a per-email error of
the permissive batch), or its group reached ``max_attempts``. All the changes of a batch go in one
transaction, in bulk, guarded by the lease (``locked_by``): a run whose lease ran out cannot
overwrite rows another run has claimed since.

**Keys and the terminal states.** A row whose outcome Resend *told* us (refused) has its key cleared:
nothing was sent under it, and a replay should build a fresh batch. A row that died of exhausted
attempts keeps its key: its last send may have reached Resend, so ``replay_dead_letters`` puts it
back with the key and the same group is re-sent under it (no duplicate within Resend's 24 hours).
If the content of a group changed meanwhile (a row edited, only part of a group replayed), Resend
refuses the old key with a new body (409 ``invalid_idempotent_request``), which tells us the earlier
send did arrive: those rows go ``dead`` with that reason and without the key, so a deliberate replay
sends them afresh. We never switch a group to a new key while its old one may have delivered.

**Failures that are not the rows' fault** (401/403, quota exhausted, breaker open, EMAIL_FROM
invalid): the claimed rows are put back as they were and the task fails without op retries
(``dagster_failure``). A 429 or our own rate limiter saying "not now": rows put back as they were,
the run stops early and succeeds; the next tick carries on.

**Throughput.** The op keeps claiming batches until nothing is due or ``time_budget_s`` (well under
the 60 s timeout) has passed, with ``concurrency`` batches in flight so one batch's database work
overlaps another's request. The Resend client paces requests from the ``ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
from dagster import Backoff, Failure, Jitter, OpExecutionContext
from pydantic import Field
from sqlalchemy import Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.clients.http import (
    ApiError,
    ClientRateLimitedError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.resend import (
    MAX_BATCH,
    BatchItemResult,
    OutgoingEmail,
    ResendClient,
    idempotency_key_for,
)
from alianza_jobs.db.breaker_store import DatabaseBreakerStore
from alianza_jobs.db.claims import RELEASE_TIMEOUT_S, claim_rows, lease_is_free, release_held
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.models import DeadLetter, DeadLetterSource, EmailQueue, EmailStatus
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails.rules import MAX_EMAIL_BYTES, InvalidEmail, prepare_email, wire_size
from alianza_jobs.logs import TaskLogger, get_logger
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import AppConfig, Database, ResendEmail

TASK = TaskSpec(
    name="process_email_queue",
    description=(
        "Sends due emails through Resend in batches of up to 100, exactly once (idempotency keys "
        "stamped before sending), retries with backoff, and dead-letters invalid or refused ones."
    ),
    cron="* * * * *",
    timeout=timedelta(minutes=1),
    retry=Retry(
        max_retries=3,
        delay=timedelta(seconds=10),
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    ),
    assets=["email_queue"],
)

UNFINISHED = (EmailStatus.PENDING.value, EmailStatus.SENDING.value, EmailStatus.FAILED.value)
# A dead letter keeps the email, but not a 40 MB body twice: the row itself still has all of it.
PAYLOAD_BODY_CHARS = 64 * 1024
ERROR_CHARS = 2000
_TABLE = EmailQueue.__table__
assert isinstance(_TABLE, Table)
TABLE: Table = _TABLE


def now_utc() -> datetime:
    """The task's clock (tests move it forward to let leases and backoffs pass)."""
    return utcnow()


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


# -- what happens to rows ----------------------------------------------------------------------


@dataclass
class Plan:
    """The row changes and dead letters of one step, written in one transaction."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def change(self, row_id: int, **values: Any) -> None:
        self.changes.append({"id": row_id, **values})

    @property
    def ids(self) -> list[int]:
        return [c["id"] for c in self.changes]


def _clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def dead_letter_payload(row: EmailQueue) -> dict[str, Any]:
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


def kill(plan: Plan, row: EmailQueue, reason: str, now: datetime, *, key: str | None) -> None:
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


def restore(plan: Plan, rows: Iterable[EmailQueue]) -> None:
    """Rows back to the status they had when this run claimed them, lease cleared.

    Their key is left as the database has it: a key stamped by this run stays, so if the request
    did get through after all, the rows are re-sent as that same group and Resend answers from its
    cache. ``sending`` (a group a crashed run abandoned) comes back as ``failed``, due as before.
    """
    for row in rows:
        status = EmailStatus.FAILED.value if row.status == EmailStatus.SENDING.value else row.status
        plan.change(row.id, status=status, locked_until=None, locked_by=None)


# -- bulk writes in one transaction ----------------------------------------------------------------


async def write_plan(engine: AsyncEngine, owner: str, plan: Plan, *, log: TaskLogger) -> set[int]:
    """Apply ``plan`` to the rows ``owner`` still holds, with its dead letters, in one transaction.

    Returns the ids written. Rows are grouped by the set of columns they change and each group is
    one executemany; the dead letters one multi-row INSERT. (``db.claims.write_rows`` does the
    same for row changes alone; the dead letters must commit with the status change, so this runs
    both in one transaction of its own.)
    """
    if not plan.changes:
        return set()
    ids = sorted(set(plan.ids))
    async with engine.begin() as conn:
        owned_now = select(TABLE.c.id).where(TABLE.c.id.in_(ids), TABLE.c.locked_by == owner)
        # FOR UPDATE keeps the answer true until our UPDATE (on SQLite the write lock does).
        owned = set((await conn.scalars(owned_now.with_for_update())).all())
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for change in plan.changes:
            if change["id"] in owned:
                key = tuple(sorted(k for k in change if k != "id"))
                groups.setdefault(key, []).append(change)
        now = utcnow()
        for columns, rows in groups.items():
            await _executemany_update(conn, owner, columns, rows, now)
        letters = [d for d in plan.dead_letters if d["source_id"] in owned]
        if letters:
            await conn.execute(insert(DeadLetter), letters)
    lost = set(ids) - owned
    if lost:
        log.warning(
            "Lease lost before the write: another run owns these rows now",
            lost=len(lost),
            lost_ids=",".join(str(i) for i in sorted(lost)[:20]),
        )
    return owned


async def _executemany_update(
    conn: AsyncConnection,
    owner: str,
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
    now: datetime,
) -> None:
    values: dict[str, Any] = {c: bindparam(f"p_{c}", type_=TABLE.c[c].type) for c in columns}
    if "updated_at" not in values:
        values["updated_at"] = now
    stmt = (
        update(TABLE)
        .where(TABLE.c.id == bindparam("p_id"), TABLE.c.locked_by == owner)
        .values(values)
    )
    await conn.execute(stmt, [{f"p_{k}": v for k, v in row.items()} for row in rows])


# -- one run ----------------------------------------------------------------------------------------


class StopRun(Exception):
    """Ends the run early (rate limited, or a failure that is not the rows' fault)."""

    def __init__(self, reason: str, error: ApiError | None = None, *, fail: bool) -> None:
        self.reason = reason
        self.error = error
        self.fail = fail
        super().__init__(reason)


@dataclass
class Batch:
    """Rows one worker holds, and which of them were stamped with a key (may have been sent)."""

    rows: list[EmailQueue]
    group_key: str | None = None
    stamped: dict[int, EmailQueue] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    @property
    def open_rows(self) -> list[EmailQueue]:
        return [r for r in self.rows if r.id not in self.done]


@dataclass
class SubBatch:
    key: str
    rows: list[EmailQueue]
    emails: list[OutgoingEmail]


class EmailQueueRun:
    """One run of the queue: workers claiming, sending and settling batches until done."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        api: ResendClient,
        config: EmailQueueConfig,
        default_from: str,
        run_id: str,
        log: TaskLogger,
        clock: Callable[[], datetime] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.engine = engine
        self.api = api
        self.config = config
        self.default_from = default_from
        self.run_id = run_id
        self.log = log
        # Looked up on each call, so a test that replaces `now_utc` moves every run's clock.
        self.clock = clock or (lambda: now_utc())
        self.rand = rand
        self.lease = timedelta(seconds=config.lease_s)
        self.report = TaskReport()
        for key in ("processed", "sent", "retrying", "dead", "restored", "batches", "resent"):
            self.report.counts[key] = 0
        self.dead_by_reason: dict[str, int] = {}
        self.stop: StopRun | None = None
        self.skipped_keys: set[str] = set()
        self.started = time.monotonic()

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> TaskReport:
        deadline = self.started + self.config.time_budget_s
        async with asyncio.TaskGroup() as group:
            for n in range(self.config.concurrency):
                group.create_task(self._worker(n, deadline))
        return self._finish()

    async def _worker(self, n: int, deadline: float) -> None:
        owner = f"{self.run_id}:{uuid.uuid4().hex[:8]}:w{n}"
        log = self.log.child(worker=n)
        while self.stop is None:
            if time.monotonic() >= deadline:
                self._stop(StopRun("time_budget", fail=False))
                break
            try:
                if not await self._one_batch(owner, log):
                    break
            except StopRun as stop:
                self._stop(stop)

    def _stop(self, stop: StopRun) -> None:
        # The first reason wins; a failing one overrides a benign one.
        if self.stop is None or (stop.fail and not self.stop.fail):
            self.stop = stop

    def _finish(self) -> TaskReport:
        counts = self.report.counts
        counts["succeeded"] = counts["sent"]
        counts["failed"] = counts["retrying"] + counts["dead"]
        counts["api_calls"] = self.api.calls
        for reason, n in sorted(self.dead_by_reason.items()):
            counts[f"dead_{reason}"] = n
        elapsed = time.monotonic() - self.started
        self.report.metadata.update(
            {
                "stopped": self.stop.reason if self.stop else "drained",
                "elapsed_s": round(elapsed, 3),
                "emails_per_s": round(counts["sent"] / elapsed, 1) if elapsed > 0 else 0.0,
                "breaker": self.api.breaker_snapshot(),
            }
        )
        return self.report

    # -- one batch --------------------------------------------------------------------------------

    async def _one_batch(self, owner: str, log: TaskLogger) -> bool:
        try:
            batch = await self._claim(owner, log)
        except BaseException:
            # Cancelled (the timeout, a failing sibling) or failed while claiming: the claim may
            # have committed without us seeing its rows. This worker's owner id holds nothing
            # else, so give back whatever it holds, as it was, rather than wait out the lease.
            released = await release_held(
                self.engine,
                EmailQueue,
                owner=owner,
                log=log,
                done="Gave back rows claimed as the run was interrupted",
            )
            if released:
                self.report.add("restored", released)
            raise
        if batch is None:
            return False
        self.report.add("processed", len(batch.rows))
        try:
            subs = await self._stamp(batch, owner, log)
            for sub in subs:
                await self._send(batch, sub, owner, log)
            if batch.open_rows:
                await self._write_guarded(batch, owner, log, self._restore_plan(batch), "restored")
        except StopRun:
            await self._write_guarded(batch, owner, log, self._restore_plan(batch), "restored")
            raise
        except BaseException as exc:
            # Crash, timeout cancellation or a database error: give back what is still ours.
            await self._release_interrupted(batch, owner, log, exc)
            raise
        return True

    async def _claim(self, owner: str, log: TaskLogger) -> Batch | None:
        """A stale group first (whole), else up to ``batch_size`` fresh due rows."""
        while True:
            now = self.clock()
            key = await self._stale_group_key(now)
            if key is None:
                break
            rows = await claim_rows(
                self.engine,
                EmailQueue,
                owner=owner,
                lease=self.lease,
                limit=MAX_BATCH,
                due=and_(EmailQueue.idempotency_key == key, EmailQueue.status.in_(UNFINISHED)),
                order_by=[EmailQueue.id],
                now=now,
            )
            if rows and await self._group_complete(key, rows):
                self.report.add("resent")
                return Batch(rows=rows, group_key=key)
            # Another run holds part of this group: sending a part under the key would be a
            # different request. Give ours back; the group is retaken whole on a later tick.
            await self._write_guarded(Batch(rows=rows), owner, log, self._restore(rows), None)
            self.skipped_keys.add(key)
        now = self.clock()
        fresh = and_(
            # `sending` without a key was never sent by this task (it stamps both at once): a row
            # written so by someone else is taken as fresh rather than left stuck.
            EmailQueue.status.in_(UNFINISHED),
            EmailQueue.idempotency_key.is_(None),
            EmailQueue.next_attempt_at <= now,
        )
        rows = await claim_rows(
            self.engine,
            EmailQueue,
            owner=owner,
            lease=self.lease,
            limit=self.config.batch_size,
            due=fresh,
            order_by=[EmailQueue.next_attempt_at, EmailQueue.id],
            now=now,
        )
        return Batch(rows=sorted(rows, key=lambda r: r.id)) if rows else None

    async def _stale_group_key(self, now: datetime) -> str | None:
        abandoned_or_due = or_(
            # `sending` with a free lease: its run crashed or was cut off mid-request.
            EmailQueue.status == EmailStatus.SENDING.value,
            and_(
                EmailQueue.status.in_((EmailStatus.FAILED.value, EmailStatus.PENDING.value)),
                EmailQueue.next_attempt_at <= now,
            ),
        )
        stmt = (
            select(EmailQueue.idempotency_key)
            .where(
                EmailQueue.idempotency_key.is_not(None),
                abandoned_or_due,
                lease_is_free(EmailQueue, now),
            )
            .order_by(EmailQueue.next_attempt_at, EmailQueue.id)
            .limit(1)
        )
        if self.skipped_keys:
            stmt = stmt.where(EmailQueue.idempotency_key.not_in(sorted(self.skipped_keys)))
        async with read_only(self.engine).connect() as conn:
            key: str | None = await conn.scalar(stmt)
        return key

    async def _group_complete(self, key: str, rows: Sequence[EmailQueue]) -> bool:
        """Did we get every unfinished row of the group? (Concurrent claimers may split one.)"""
        stmt = (
            select(func.count())
            .select_from(EmailQueue)
            .where(
                EmailQueue.idempotency_key == key,
                EmailQueue.status.in_(UNFINISHED),
                EmailQueue.id.not_in([r.id for r in rows]),
            )
        )
        async with read_only(self.engine).connect() as conn:
            others = int(await conn.scalar(stmt) or 0)
        return others == 0

    async def _stamp(self, batch: Batch, owner: str, log: TaskLogger) -> list[SubBatch]:
        """Validate; dead-letter the invalid rows; stamp key + ``sending`` on the rest; commit."""
        now = self.clock()
        plan = Plan()
        valid: list[tuple[EmailQueue, OutgoingEmail]] = []
        for row in batch.rows:
            if batch.group_key is not None and row.attempts >= self.config.max_attempts:
                # Cut off mid-request on its last allowed attempt (see _release_interrupted).
                kill(
                    plan,
                    row,
                    self._exhausted(row.attempts, row.last_error),
                    now,
                    key=batch.group_key,
                )
                self._count_dead("exhausted")
                continue
            try:
                email = prepare_email(
                    to_address=row.to_address,
                    from_address=row.from_address,
                    subject=row.subject,
                    html=row.html,
                    text=row.text,
                    default_from=self.default_from,
                )
            except InvalidEmail as err:
                kill(plan, row, f"invalid: {err}", now, key=None)
                self._count_dead("invalid")
                log.warning("Email refused before sending", email_id=row.id, reason=str(err))
                continue
            valid.append((row, email))
        subs = self._split(batch, valid)
        for sub in subs:
            for row in sub.rows:
                plan.change(row.id, status=EmailStatus.SENDING.value, idempotency_key=sub.key)
        written = await write_plan(self.engine, owner, plan, log=log)
        self.report.add("dead", sum(1 for d in plan.dead_letters if d["source_id"] in written))
        batch.done |= {d["source_id"] for d in plan.dead_letters}
        batch.done |= {i for i in plan.ids if i not in written}  # lease lost: not ours any more
        kept = []
        for sub in subs:
            rows = [r for r in sub.rows if r.id in written]
            if len(rows) != len(sub.rows):
                # Part of the batch went to another run: send nothing under this key. The part
                # still ours is given back at the end of the batch (it keeps the key as a group).
                continue
            batch.stamped.update({r.id: r for r in rows})
            kept.append(sub)
        return kept

    def _split(
        self, batch: Batch, valid: Sequence[tuple[EmailQueue, OutgoingEmail]]
    ) -> list[SubBatch]:
        if not valid:
            return []
        if batch.group_key is not None:
            # A group is re-sent exactly as it was first sent: one request, the same key.
            rows = [row for row, _ in valid]
            emails = [email for _, email in valid]
            expected = self._key_for(rows, emails)
            if expected != batch.group_key:
                self.log.warning(
                    "A re-sent group differs from its first send; keeping its original key so "
                    "Resend refuses it if that send arrived",
                    idempotency_key=batch.group_key,
                    rows=len(rows),
                )
            return [SubBatch(batch.group_key, rows, emails)]
        subs: list[SubBatch] = []
        rows, emails, size = [], [], 2
        for row, email in valid:
            item = wire_size(email) + 1
            if rows and size + item > self.config.max_request_bytes:
                subs.append(SubBatch(self._key_for(rows, emails), rows, emails))
                rows, emails, size = [], [], 2
            rows.append(row)
            emails.append(email)
            size += item
        subs.append(SubBatch(self._key_for(rows, emails), rows, emails))
        return subs

    @staticmethod
    def _key_for(rows: Sequence[EmailQueue], emails: Sequence[OutgoingEmail]) -> str:
        namespace = "email_queue:" + ",".join(str(r.id) for r in rows)
        return idempotency_key_for(emails, namespace=namespace)

    async def _send(self, batch: Batch, sub: SubBatch, owner: str, log: TaskLogger) -> None:
        blog = log.child(idempotency_key=sub.key[:16], rows=len(sub.rows))
        started = time.monotonic()
        try:
            results = await self.api.send_batch(sub.emails, idempotency_key=sub.key)
        except ClientRateLimitedError as err:
            raise StopRun("rate_limited", err, fail=False) from None
        except FatalApiError as err:
            raise StopRun("fatal", err, fail=True) from None
        except RetryableApiError as err:
            if err.status == 429:
                # Refused before processing: nothing was sent. Stop and let the next tick go on.
                raise StopRun("rate_limited", err, fail=False) from None
            plan = self._retry_plan(sub, err)
            await self._settle(batch, sub, owner, blog, plan)
            blog.warning("Batch failed; will retry", error=str(err))
            return
        except PermanentApiError as err:
            plan = self._refused_plan(sub, err)
            await self._settle(batch, sub, owner, blog, plan)
            blog.error("Batch refused by Resend", err)
            return
        plan = self._results_plan(sub, results, blog)
        await self._settle(batch, sub, owner, blog, plan)
        self.report.add("batches")
        blog.info(
            "Batch sent",
            sent=sum(r.ok for r in results),
            refused=sum(not r.ok for r in results),
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _settle(
        self, batch: Batch, sub: SubBatch, owner: str, log: TaskLogger, plan: Plan
    ) -> None:
        await self._write_outcome(owner, plan, log)
        batch.done |= {r.id for r in sub.rows}

    async def _write_outcome(self, owner: str, plan: Plan, log: TaskLogger) -> None:
        written = await write_plan(self.engine, owner, plan, log=log)
        for change in plan.changes:
            if change["id"] not in written:
                continue
            status = change.get("status")
            if status == EmailStatus.SENT.value:
                self.report.add("sent")
            elif status == EmailStatus.FAILED.value:
                self.report.add("retrying")
            elif status == EmailStatus.DEAD.value:
                self.report.add("dead")

    # -- plans for each outcome -------------------------------------------------------------------

    def _results_plan(
        self, sub: SubBatch, results: Sequence[BatchItemResult], log: TaskLogger
    ) -> Plan:
        now = self.clock()
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
            kill(plan, row, f"refused by Resend: {message}", now, key=None)
            self._count_dead("refused")
            log.warning("Email refused by Resend", email_id=row.id, reason=message)
        return plan

    def _refused_plan(self, sub: SubBatch, err: PermanentApiError) -> Plan:
        now = self.clock()
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
            kill(plan, row, reason, now, key=None)
            self._count_dead(kind)
        return plan

    def _retry_plan(self, sub: SubBatch, err: ApiError) -> Plan:
        """Outcome unknown: keep the key; retry the group later, or give up at max attempts."""
        now = self.clock()
        plan = Plan()
        attempts = max(r.attempts for r in sub.rows) + 1
        error = f"attempt {attempts}: {err}"[:ERROR_CHARS]
        if attempts >= self.config.max_attempts:
            for row in sub.rows:
                row.attempts = attempts
                kill(plan, row, self._exhausted(attempts, error), now, key=sub.key)
                self._count_dead("exhausted")
            return plan
        retry_at = now + self.config.backoff(attempts, self.rand())
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

    def _exhausted(self, attempts: int, last_error: str | None) -> str:
        return f"gave up after {attempts} attempts; last error: {last_error or 'unknown'}"

    def _restore(self, rows: Iterable[EmailQueue]) -> Plan:
        plan = Plan()
        restore(plan, rows)
        return plan

    def _restore_plan(self, batch: Batch) -> Plan:
        return self._restore(batch.open_rows)

    def _count_dead(self, reason: str) -> None:
        self.dead_by_reason[reason] = self.dead_by_reason.get(reason, 0) + 1

    # -- giving rows back -------------------------------------------------------------------------

    async def _write_guarded(
        self, batch: Batch, owner: str, log: TaskLogger, plan: Plan, counter: str | None
    ) -> None:
        if not plan.changes:
            return
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                written = await write_plan(self.engine, owner, plan, log=log)
        except Exception as exc:
            log.error(
                "Could not give rows back; they return to the queue when their lease passes",
                exc,
                rows=len(plan.changes),
            )
            return
        batch.done |= written
        if counter is not None:
            self.report.add(counter, len(written))

    async def _release_interrupted(
        self, batch: Batch, owner: str, log: TaskLogger, exc: BaseException
    ) -> None:
        """The run is ending mid-batch. Rows stamped with a key may have been sent: they become
        ``failed`` (key kept, attempt counted) and are re-sent as a group; the others go back as
        they were."""
        now = self.clock()
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
        await self._write_guarded(batch, owner, log, plan, "released")


@TASK.op
async def send_due_emails(
    context: OpExecutionContext,
    config: EmailQueueConfig,
    database: Database,
    resend: ResendEmail,
    app: AppConfig,
) -> TaskReport:
    log = get_logger()
    try:
        prepare_email(
            to_address="check@example.com",
            from_address=None,
            subject="check",
            html=None,
            text="check",
            default_from=app.email_from,
        )
    except InvalidEmail as err:
        raise Failure(
            description=f"EMAIL_FROM is not a usable sender ({err.reason}); fix the setting",
            allow_retries=False,
        ) from None
    async with (
        database.engine() as engine,
        resend.client(breaker_store=DatabaseBreakerStore(engine)) as api,
    ):
        run = EmailQueueRun(
            engine=engine,
            api=api,
            config=config,
            default_from=app.email_from,
            run_id=context.run_id,
            log=log,
        )
        try:
            report = await run.run()
        except BaseExceptionGroup as group:
            # One worker failed (a database error): the others were cancelled and gave their
            # rows back. Re-raise that error itself, so the log and the retry policy see it.
            raise _first_error(group) from None
    log.info("Email queue run finished", **report.counts, stopped=report.metadata["stopped"])
    stop = run.stop
    if stop is not None and stop.fail and stop.error is not None:
        log.error("Email queue stopped by a failure that retrying soon cannot fix", stop.error)
        raise dagster_failure(stop.error)
    if stop is not None and stop.error is not None:
        log.warning("Email queue stopped early", reason=stop.reason, error=str(stop.error))
    return report


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


job = TASK.job(send_due_emails)


__all__ = [
    "TASK",
    "EmailQueueConfig",
    "EmailQueueRun",
    "job",
    "send_due_emails",
    "write_plan",
]
