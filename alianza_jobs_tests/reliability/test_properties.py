"""Properties: hypothesis drives the claim/lease and the retry/backoff state machines through random
interleavings of claim, finish, fail, crash and lease expiry; no item is lost or done twice.

* :class:`LeaseMachine`: the email queue's real claim (``queue_sql.claim_fresh``: the INSERT ...
  SELECT ... ON CONFLICT that makes a platform row's delivery or takes a free lease over) and the
  real ``db.claims`` writes and releases on ``email_deliveries``, on a real (SQLite) database,
  three workers, a clock moved by hand. A worker claims a batch, finishes part of it (delivery and
  platform row in one transaction), gives it back, crashes (its claim forgotten, nothing released,
  the process gone), or sleeps past its lease and wakes up to write. Invariants after every step:
  nothing done twice, every row accounted for, the platform row in step with ours, no live lease
  ever lost; at the end, after the leases pass, one sweep finishes everything.
* :class:`EmailQueueMachine`: the real ``EmailQueueRun`` against the Resend emulator (in process),
  with runs that meet 5xx before or after the send, dropped connections, cut-in-half answers, runs
  killed between Resend's answer and the write, and time passing. Invariants: no email delivered
  twice, every ``sent`` row delivered once under its key, nothing ``sending`` without a lease, the
  platform row's status the same as ours (the default map); at the end, once time has passed and
  the faults are gone, every row is sent or dead, each email once.
* Pure properties of the backoff formulas and of the run-monitor budget built from them.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from unittest import mock

import pytest
from dagster import Backoff, Jitter
from dagster._core.definitions import policy as dagster_policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from alianza_jobs.clients.http import RetrySettings, Timing
from alianza_jobs.db.claims import release_rows, write_rows
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import CircuitBreaker, DeadLetter
from alianza_jobs.db.platform_tables import PlatformTables, platform_tables
from alianza_jobs.db.schema_map import default_map
from alianza_jobs.defs.emails import process_email_queue, queue_sql
from alianza_jobs.defs.emails.process_email_queue import EmailQueueConfig, EmailQueueRun
from alianza_jobs.defs.reports import daily_report
from alianza_jobs.defs.sessions import cleanup_expired_sessions
from alianza_jobs.defs.videos import process_streaming_video_queue, sync_stream_catalog
from alianza_jobs.emulators import EMULATOR_API_KEY, ResendEmulator
from alianza_jobs.logs import TaskLogger
from alianza_jobs.platform.task import Retry
from alianza_jobs.resources import EmulatedResendEmail
from alianza_jobs_tests.defs.emails.fixtures import Row, add_emails, rows_by_id
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import email_row, migrate, run_async

T = TypeVar("T")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=60)
WORKERS = 3


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file each example copies (migrating per example would dominate)."""
    path = tmp_path_factory.mktemp("properties") / "template.db"
    run_async(migrate(f"sqlite:///{path}"))
    return path


class _AsyncMachine(RuleBasedStateMachine):
    template: ClassVar[Path]
    stats: ClassVar[Counter[str]] = Counter()
    ids: list[str]  # the platform rows enqueued, in order

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="reliability-props-"))
        shutil.copyfile(self.template, self.dir / "app.db")
        self.engine = create_engine(f"sqlite:///{self.dir / 'app.db'}")
        self.tables: PlatformTables = self.run(platform_tables(self.engine, default_map()))
        type(self).stats["examples"] += 1

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.final_check()
        finally:
            self.run(self.engine.dispose())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def final_check(self) -> None:
        """The liveness check at the end of an example."""

    async def merged_rows(self) -> dict[str, Row]:
        """Each platform row with its delivery (our state, the lease) and its own status."""
        return await rows_by_id(self.engine)

    async def enqueue_rows(self, tag: str, n: int) -> list[str]:
        """``n`` platform rows as the platform enqueues them: no delivery until claimed."""
        return await add_emails(self.engine, [email_row(len(self.ids) + i, tag) for i in range(n)])


# -- the claim/lease state machine -------------------------------------------------------------------


class LeaseMachine(_AsyncMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.generation = [0] * WORKERS
        self.held: dict[int, set[str]] = {w: set() for w in range(WORKERS)}
        self.claimed_at: dict[int, datetime] = {}
        self.done: Counter[str] = Counter()
        self.ids = []

    def owner(self, worker: int) -> str:
        # A crashed process never comes back: its successor has another owner id.
        return f"run-{worker}-{self.generation[worker]}"

    def live(self, worker: int) -> bool:
        return worker in self.claimed_at and self.now < self.claimed_at[worker] + LEASE

    async def claim_rows(self, owner: str, limit: int) -> list[str]:
        rows = await queue_sql.claim_fresh(
            self.engine, self.tables, owner=owner, lease=LEASE, limit=limit, now=self.now
        )
        return [row.id for row in rows]

    async def finish_rows(self, owner: str, ids: set[str]) -> list[str]:
        """Our ``sent`` and the platform row's, in one transaction (``write_rows``' ``also``)."""
        emails = self.tables.email_queue

        async def platform_sent(conn: AsyncConnection, written: list[str]) -> None:
            sent = self.tables.status("email_queue", "sent")
            await conn.execute(update(emails).where(emails.c.id.in_(written)).values(status=sent))

        return await write_rows(
            self.engine,
            queue_sql.DELIVERIES,
            owner=owner,
            changes=[{"id": i, "status": "sent"} for i in sorted(ids)],
            also=platform_sent,
        )

    @rule(n=st.integers(1, 6))
    def enqueue(self, n: int) -> None:
        self.ids += self.run(self.enqueue_rows("lease", n))
        type(self).stats["items"] += n

    @rule(
        worker=st.integers(0, WORKERS - 1),
        limit=st.integers(1, 5),
        after=st.sampled_from([0, 0, 30, 59, 60, 61]),
    )
    def claim(self, worker: int, limit: int, after: int) -> None:
        """A worker claims a batch, ``after`` seconds from now: most interleavings worth having
        are a claim while (or just after) another worker's lease runs."""
        self.now += timedelta(seconds=after)
        if self.held[worker]:
            return  # one batch at a time, as a task's worker
        got = set(self.run(self.claim_rows(self.owner(worker), limit)))
        for other in range(WORKERS):
            if other != worker and got & self.held[other]:
                # Taken from another worker: only ever after that worker's lease ran out.
                assert not self.live(other), (other, got & self.held[other])
        self.held[worker] = got
        self.claimed_at[worker] = self.now

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([w for w in range(WORKERS) if self.held[w]]))
        part = data.draw(st.sets(st.sampled_from(sorted(self.held[worker])), min_size=1))
        written = set(self.run(self.finish_rows(self.owner(worker), part)))
        assert written <= part
        if self.live(worker):
            assert written == part, "a live lease lost rows"
        for row_id in written:
            self.done[row_id] += 1
        self.held[worker] -= part

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        """The task gives its unfinished rows back (an error, a timeout's cancellation)."""
        worker = data.draw(st.sampled_from([w for w in range(WORKERS) if self.held[w]]))
        before = self.run(self.merged_rows())
        mine = {i for i, row in before.items() if row.locked_by == self.owner(worker)}
        # The claim changed nothing but the lease (our `sending` comes with the batch's key,
        # later): giving back is clearing it.
        released = self.run(
            release_rows(self.engine, queue_sql.DELIVERIES, owner=self.owner(worker))
        )
        assert released == len(mine)
        self.held[worker] = set()

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """SIGKILL: the claim is forgotten and nothing is released."""
        worker = data.draw(st.sampled_from([w for w in range(WORKERS) if self.held[w]]))
        self.held[worker] = set()
        self.claimed_at.pop(worker, None)
        self.generation[worker] += 1
        type(self).stats["crashes"] += 1

    @rule(seconds=st.sampled_from([10, 30, 45, 59, 60, 61, 150]))
    def time_passes(self, seconds: int) -> None:
        """Leases expire (around the boundary: 59, 60, 61 s of a 60 s lease); a worker holding
        rows may be a zombie that wakes up later."""
        self.now += timedelta(seconds=seconds)

    @invariant()
    def nothing_done_twice_nothing_lost(self) -> None:
        type(self).stats["steps"] += 1
        rows = self.run(self.merged_rows())
        assert sorted(rows) == sorted(self.ids), "a row disappeared"
        assert all(count == 1 for count in self.done.values()), self.done
        sent = {i for i, row in rows.items() if row.status == "sent"}
        assert sent == set(self.done), (sent, set(self.done))
        for row_id, row in rows.items():
            assert row.status in ("pending", "sent"), (row_id, row.status)
            # Written in one transaction with ours (`also`), or neither was.
            assert row.platform_status == row.status, (row_id, row.platform_status, row.status)
            # Finishing gives the lease back in the same statement.
            assert row.status != "sent" or row.locked_by is None, (row_id, row.locked_by)
            # A claim makes the delivery; nothing else does here.
            assert row.has_delivery or row.locked_by is None, row_id
        for worker in range(WORKERS):
            if self.live(worker):
                taken = {i for i in self.held[worker] if rows[i].locked_by != self.owner(worker)}
                assert not taken, f"worker {worker}'s live lease lost {taken}"

    def final_check(self) -> None:
        """After every lease has passed, one sweep finishes all that is left, exactly once."""
        self.now += 2 * LEASE
        sweeper = "sweeper"
        claimed = self.run(self.claim_rows(sweeper, 10_000))
        written = self.run(self.finish_rows(sweeper, set(claimed)))
        for row_id in written:
            self.done[row_id] += 1
        assert sorted(self.done) == sorted(self.ids), "an item was lost"
        assert set(self.done.values()) <= {1}, "an item was done twice"


def test_claims_and_leases_under_random_interleavings(template_db: Path, outcome: Outcomes) -> None:
    LeaseMachine.template = template_db
    LeaseMachine.stats = Counter()
    run_state_machine_as_test(
        LeaseMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    stats = LeaseMachine.stats
    outcome.add(
        "properties",
        "claim/lease: random claim, finish, fail, crash, lease expiry, zombie writes "
        f"({stats['examples']} interleavings, {stats['steps']} steps, {stats['crashes']} crashes)",
        runs=stats["examples"],
        items=stats["items"],
    )
    assert stats["crashes"] > 0 and stats["steps"] > stats["examples"]


# -- the email queue's retry/backoff state machine ---------------------------------------------------

FAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "503 before the send": {
        "error_rate": 1.0,
        "error_statuses": [503],
        "fault_after_processing_share": 0.0,
    },
    "500 after the send": {
        "error_rate": 1.0,
        "error_statuses": [500],
        "fault_after_processing_share": 1.0,
    },
    "connection dropped after the send": {"reset_rate": 1.0, "fault_after_processing_share": 1.0},
    "answer cut in half": {"malformed_rate": 1.0},
}
CLEAR = {"error_rate": 0.0, "reset_rate": 0.0, "malformed_rate": 0.0}
QUEUE = EmailQueueConfig(
    batch_size=4,
    concurrency=2,
    lease_s=60,
    backoff_base_s=10,
    backoff_max_s=120,
    max_attempts=4,
    time_budget_s=10,
)


class _ProcessDied(BaseException):
    """Stands for SIGKILL inside the run: nothing after it runs (not even ``finally`` writes)."""


class _KilledAfterSend(EmailQueueRun):
    """Dies between Resend's answer and the write; no worker gives anything back."""

    async def _write_outcome(self, *args: Any, **kwargs: Any) -> None:
        raise _ProcessDied

    async def _release_interrupted(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def _write_guarded(self, *args: Any, **kwargs: Any) -> None:
        return None


async def _no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


class EmailQueueMachine(_AsyncMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = datetime.now(UTC)
        self.state_dir = self.dir / "emulators"
        self.emulator = ResendEmulator(self.state_dir)
        # Lots of room: the limiter is not under test, and its waits would be real ones.
        self.emulator.configure(rate_limit_requests=100_000)
        self.ids = []

    async def _run(self, run_class: type[EmailQueueRun], config: EmailQueueConfig = QUEUE) -> None:
        resend = EmulatedResendEmail(
            api_key=EMULATOR_API_KEY,
            emulator_state_dir=str(self.state_dir),
            max_attempts=2,
            breaker_failure_threshold=1000,
        )
        async with self.engine.begin() as conn:
            # The breaker is not under test here (its own tests cover it): keep it closed.
            await conn.execute(delete(CircuitBreaker))
        async with resend.client(timing=Timing(sleep=_no_wait)) as api:
            run = run_class(
                engine=self.engine,
                tables=self.tables,
                api=api,
                config=config,
                default_from="Alianza <jobs@alianza.test>",
                run_id=str(uuid.uuid4()),
                log=TaskLogger({"task": "properties"}),
                clock=lambda: self.now,
                rand=lambda: 0.5,
            )
            await run.run()

    @initialize(n=st.integers(1, 7))
    def start_with_a_queue(self, n: int) -> None:
        """Hypothesis enables a random subset of the rules in each example (swarm testing): one
        with only the killed tick enabled, and nothing queued, would kill nothing and prove
        nothing. So every example starts with rows to send."""
        self.enqueue(n)

    @rule(n=st.integers(1, 7))
    def enqueue(self, n: int) -> None:
        self.ids += self.run(self.enqueue_rows("props", n))
        type(self).stats["items"] += n

    @rule(fault=st.sampled_from(list(FAULTS)))
    def tick(self, fault: str) -> None:
        self.emulator.configure(**{**CLEAR, **FAULTS[fault]})
        self.run(self._run(EmailQueueRun))
        type(self).stats["runs"] += 1

    @rule()
    def tick_killed_after_the_send(self) -> None:
        self.emulator.configure(**CLEAR)
        died = False
        try:
            # One worker: a killed process stops everything at once, while here a second worker
            # would be cancelled mid-statement and hold SQLite's lock until collected.
            self.run(self._run(_KilledAfterSend, QUEUE.model_copy(update={"concurrency": 1})))
        except BaseExceptionGroup as group:
            died = group.subgroup(_ProcessDied) is not None
        if died:  # (with nothing due, no batch was sent and nothing died)
            type(self).stats["crashes"] += 1

    @rule(seconds=st.sampled_from([5, 30, 61, 300]))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @invariant()
    def never_delivered_twice(self) -> None:
        type(self).stats["steps"] += 1
        assert all(n == 1 for n in self.emulator.counts_by_message().values()), "a duplicate"
        rows = self.run(self.rows())
        inbox = {e.id: e for e in self.emulator.inbox()}
        for row in rows.values():
            assert row.status in ("pending", "sending", "sent", "failed", "dead")
            # Each write of our state carries the platform's (the default map: the same value).
            assert row.platform_status == row.status, (row.id, row.platform_status, row.status)
            if row.status == "sent":
                email = inbox.get(row.provider_message_id or "")
                assert email is not None and email.idempotency_key == row.idempotency_key
            if row.status == "sending":
                assert row.locked_by is not None  # only a killed run leaves these

    async def rows(self) -> dict[str, Row]:
        return await self.merged_rows()

    def final_check(self) -> None:
        """Faults over, time passed: a few ticks leave every row sent or dead, each email once."""
        self.emulator.configure(**CLEAR)
        for _ in range(QUEUE.max_attempts + 2):
            self.now += timedelta(seconds=QUEUE.backoff_max_s + QUEUE.lease_s + 1)
            self.run(self._run(EmailQueueRun))
            rows = self.run(self.rows())
            if all(r.status in ("sent", "dead") for r in rows.values()):
                break
        rows = self.run(self.rows())
        stuck = {i: r.status for i, r in rows.items() if r.status not in ("sent", "dead")}
        assert not stuck, f"items never finished: {stuck}"
        assert all(n == 1 for n in self.emulator.counts_by_message().values()), "a duplicate"
        dead = {i for i, r in rows.items() if r.status == "dead"}
        letters = self.run(self.dead_letters())
        assert letters == Counter(dict.fromkeys(dead, 1)), (letters, dead)
        type(self).stats["dead"] += len(dead)

    async def dead_letters(self) -> Counter[str]:
        async with self.engine.connect() as conn:
            return Counter((await conn.scalars(select(DeadLetter.source_id))).all())


def test_email_queue_retries_crashes_and_time(template_db: Path, outcome: Outcomes) -> None:
    EmailQueueMachine.template = template_db
    EmailQueueMachine.stats = Counter()
    run_state_machine_as_test(
        EmailQueueMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=20,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    stats = EmailQueueMachine.stats
    outcome.add(
        "properties",
        "email queue: random 5xx before/after the send, dropped and cut answers, kills after "
        f"the send, time passing ({stats['examples']} interleavings, {stats['runs']} runs, "
        f"{stats['crashes']} kills)",
        runs=stats["runs"],
        items=stats["items"],
    )
    assert stats["runs"] > stats["examples"]
    # Kills in a good share of the interleavings, not one or two by the luck of the draw (which
    # rules each example enables changes with this class's source).
    assert stats["crashes"] >= stats["examples"] // 4, stats


# -- pure properties of the backoff ------------------------------------------------------------------


@given(
    base=st.floats(0, 600),
    cap=st.floats(0, 7200),
    attempts=st.integers(1, 40),
    rand=st.floats(0, 1),
)
def test_queue_backoff_is_bounded_jittered_and_capped(
    base: float, cap: float, attempts: int, rand: float
) -> None:
    config = EmailQueueConfig(backoff_base_s=base, backoff_max_s=cap)
    step = min(cap, base * 2.0 ** (attempts - 1))
    delay = config.backoff(attempts, rand).total_seconds()
    assert step / 2 - 1e-6 <= delay <= step + 1e-6
    # Never shrinks as attempts grow (same draw), never beyond the cap.
    assert config.backoff(attempts + 1, rand).total_seconds() >= delay - 1e-6
    assert delay <= cap + 1e-6


@given(attempt=st.integers(1, 30), rand=st.floats(0, 1))
def test_client_backoff_is_bounded(attempt: int, rand: float) -> None:
    retry = RetrySettings()
    step = min(retry.backoff_max_s, retry.backoff_base_s * 2.0 ** (attempt - 1))
    assert step / 2 - 1e-9 <= retry.backoff(attempt, rand) <= step + 1e-9


TASK_RETRIES = [
    m.TASK
    for m in (
        process_streaming_video_queue,
        process_email_queue,
        sync_stream_catalog,
        cleanup_expired_sessions,
        daily_report,
    )
]


@pytest.mark.parametrize("spec", TASK_RETRIES, ids=lambda s: s.name)
@given(draws=st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_run_monitor_budget_covers_every_retry_dagster_can_take(
    spec: Any, draws: list[float]
) -> None:
    """``dagster/max_runtime`` (every attempt timing out, every wait Dagster may draw) must
    exceed what a run can really take, or run monitoring kills a healthy retrying run."""
    retry: Retry = spec.retry
    waits = 0.0
    values = iter(draws * 20)
    with mock.patch.object(dagster_policy, "random", side_effect=lambda: next(values)):
        for attempt in range(1, retry.max_retries + 1):
            waits += dagster_policy.calculate_delay(
                attempt, retry.backoff, retry.jitter, retry.delay.total_seconds()
            )
    worst = spec.timeout.total_seconds() * spec.max_attempts + waits
    assert worst <= spec.max_runtime.total_seconds()
    assert retry.backoff in (None, Backoff.EXPONENTIAL, Backoff.LINEAR)
    assert retry.jitter in (None, Jitter.PLUS_MINUS, Jitter.FULL)
