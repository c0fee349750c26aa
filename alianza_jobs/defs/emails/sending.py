"""One run of the email queue: workers that each claim a stale group (whole) or else fresh due rows,
stamp their keys, send and settle them, until nothing is due, the time budget has passed, or a
:class:`StopRun` ends the run for all of them."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.http import (
    ApiError,
    ClientRateLimitedError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
)
from alianza_jobs.clients.resend import MAX_BATCH, OutgoingEmail, ResendClient
from alianza_jobs.db.claims import RELEASE_TIMEOUT_S, release_held
from alianza_jobs.db.models import EmailStatus
from alianza_jobs.db.platform_tables import PlatformTables
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails import plans, queue_sql
from alianza_jobs.defs.emails.batches import Batch, QueuedEmail, SubBatch, key_for, split
from alianza_jobs.defs.emails.config import EmailQueueConfig
from alianza_jobs.defs.emails.plans import Plan
from alianza_jobs.defs.emails.rules import InvalidEmail, prepare_email
from alianza_jobs.logs import TaskLogger
from alianza_jobs.platform.task import TaskReport


def now_utc() -> datetime:
    """The task's clock (tests move it forward to let leases and backoffs pass)."""
    return utcnow()


class StopRun(Exception):
    """Ends the run early (rate limited, or a failure that is not the rows' fault)."""

    def __init__(self, reason: str, error: ApiError | None = None, *, fail: bool) -> None:
        self.reason = reason
        self.error = error
        self.fail = fail
        super().__init__(reason)


class EmailQueueRun:
    """One run of the queue: workers claiming, sending and settling batches until done."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        tables: PlatformTables,
        api: ResendClient,
        config: EmailQueueConfig,
        default_from: str,
        run_id: str,
        log: TaskLogger,
        clock: Callable[[], datetime] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.engine = engine
        self.tables = tables
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

    def _planned(self, plan: Plan) -> Plan:
        for reason, n in plan.dead_by_reason.items():
            self.dead_by_reason[reason] = self.dead_by_reason.get(reason, 0) + n
        return plan

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
                queue_sql.DELIVERIES,
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
                await self._write_guarded(
                    batch, owner, log, plans.restored(batch.open_rows), "restored"
                )
        except StopRun:
            await self._write_guarded(
                batch, owner, log, plans.restored(batch.open_rows), "restored"
            )
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
            key = await queue_sql.stale_group_key(self.engine, self.tables, now, self.skipped_keys)
            if key is None:
                break
            rows = await queue_sql.claim_group(
                self.engine,
                self.tables,
                key,
                owner=owner,
                lease=self.lease,
                limit=MAX_BATCH,
                now=now,
            )
            if rows and await queue_sql.group_complete(self.engine, self.tables, key, rows):
                self.report.add("resent")
                return Batch(rows=rows, group_key=key)
            # Another run holds part of this group: sending a part under the key would be a
            # different request. Give ours back; the group is retaken whole on a later tick.
            await self._write_guarded(Batch(rows=rows), owner, log, plans.restored(rows), None)
            self.skipped_keys.add(key)
        now = self.clock()
        rows = await queue_sql.claim_fresh(
            self.engine,
            self.tables,
            owner=owner,
            lease=self.lease,
            limit=self.config.batch_size,
            now=now,
        )
        return Batch(rows=rows) if rows else None

    async def _stamp(self, batch: Batch, owner: str, log: TaskLogger) -> list[SubBatch]:
        """Validate; dead-letter the invalid rows; stamp key + ``sending`` on the rest; commit.

        The stamp commits before the request goes out, so whatever happens next the rows know the
        key they may have been sent under.
        """
        now = self.clock()
        plan = Plan()
        valid: list[tuple[QueuedEmail, OutgoingEmail]] = []
        for row in batch.rows:
            if batch.group_key is not None and row.attempts >= self.config.max_attempts:
                # Cut off mid-request on its last allowed attempt (see _release_interrupted).
                reason = plans.exhausted(row.attempts, row.last_error)
                plans.kill(plan, row, reason, now, key=batch.group_key, kind="exhausted")
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
                plans.kill(plan, row, f"invalid: {err}", now, key=None, kind="invalid")
                log.warning("Email refused before sending", email_id=row.id, reason=str(err))
                continue
            valid.append((row, email))
        self._planned(plan)
        subs = split(batch, valid, max_request_bytes=self.config.max_request_bytes)
        if batch.group_key is not None and subs:
            group = subs[0]
            if key_for(group.rows, group.emails) != batch.group_key:
                self.log.warning(
                    "A re-sent group differs from its first send; keeping its original key so "
                    "Resend refuses it if that send arrived",
                    idempotency_key=batch.group_key,
                    rows=len(group.rows),
                )
        for sub in subs:
            for row in sub.rows:
                plan.change(row.id, status=EmailStatus.SENDING.value, idempotency_key=sub.key)
        written = await queue_sql.write_plan(self.engine, self.tables, owner, plan, log=log)
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
            plan = plans.retry_plan(sub, err, self.clock(), self.config, self.rand)
            await self._settle(batch, sub, owner, blog, self._planned(plan))
            blog.warning("Batch failed; will retry", error=str(err))
            return
        except PermanentApiError as err:
            plan = plans.refused_plan(sub, err, self.clock())
            await self._settle(batch, sub, owner, blog, self._planned(plan))
            blog.error("Batch refused by Resend", err)
            return
        plan = plans.results_plan(sub, results, self.clock(), blog)
        await self._settle(batch, sub, owner, blog, self._planned(plan))
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
        written = await queue_sql.write_plan(self.engine, self.tables, owner, plan, log=log)
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

    # -- giving rows back -------------------------------------------------------------------------

    async def _write_guarded(
        self, batch: Batch, owner: str, log: TaskLogger, plan: Plan, counter: str | None
    ) -> None:
        if not plan.changes:
            return
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                written = await queue_sql.write_plan(self.engine, self.tables, owner, plan, log=log)
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
        """The run is ending mid-batch: see :func:`plans.interrupted_plan`."""
        plan = plans.interrupted_plan(batch, exc, self.clock())
        await self._write_guarded(batch, owner, log, plan, "released")
