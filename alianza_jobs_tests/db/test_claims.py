"""Claims with leases: no row is handed to two claimers, and no row is lost when a claimer dies.

Each queue claims with a statement of its own, the video queue's ``lease_due_rows`` and the email
queue's ``claim_fresh``; the lease lives on the jobs' bookkeeping row (``video_checks``,
``email_deliveries``), which the first claim of a platform row makes. ``db.claims`` writes and gives
back what a claim holds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import column, event, insert, select, update
from sqlalchemy import values as sql_values
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alianza_jobs.db import claims, migrate
from alianza_jobs.db.claims import release_rows, write_rows
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import EmailDelivery, VideoCheck
from alianza_jobs.db.platform_models import EmailQueue, Streaming
from alianza_jobs.db.platform_tables import PlatformTables, platform_tables
from alianza_jobs.db.schema_map import default_map, load_schema_map
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails.queue_sql import DELIVERIES, claim_fresh
from alianza_jobs.defs.videos.queue_sql import CHECKS, lease_due_rows
from alianza_jobs_tests.conftest import REPO
from alianza_jobs_tests.db.helpers import (
    DRIZZLE_SCHEMA_MAP,
    count,
    create_drizzle_platform_schema,
    migrated_engine,
)

LEASE = timedelta(minutes=5)
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def tables(engine: AsyncEngine) -> PlatformTables:
    return await platform_tables(engine, default_map())


def keys(ids: Collection[int]) -> set[str]:
    """Platform ids as the bookkeeping tables key them."""
    return {str(i) for i in ids}


async def add_videos(engine: AsyncEngine, n: int, **overrides: Any) -> list[int]:
    """``n`` platform rows (queued Cloudflare videos unless overridden); returns their ids."""
    rows = [
        {"external_id": f"{i:032x}", "provider": "cloudflare", "status": "queued", **overrides}
        for i in range(n)
    ]
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(Streaming).returning(Streaming.id, sort_by_parameter_order=True), rows
        )
        return list(result.scalars())


async def add_emails(engine: AsyncEngine, n: int, **overrides: Any) -> list[int]:
    """``n`` platform rows, created a minute apart in order (pending unless overridden)."""
    rows = [
        {
            "to_address": f"u{i}@example.com",
            "subject": "Hola",
            "text": "hola",
            "status": "pending",
            "created_at": T0 - timedelta(hours=1) + timedelta(minutes=i),
            **overrides,
        }
        for i in range(n)
    ]
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(EmailQueue).returning(EmailQueue.id, sort_by_parameter_order=True), rows
        )
        return list(result.scalars())


async def leases(engine: AsyncEngine, model: Any = VideoCheck) -> dict[str, tuple[Any, ...]]:
    """Every bookkeeping row's (locked_by, locked_until), by its key."""
    key = CHECKS.c.streaming_id if model is VideoCheck else DELIVERIES.c.email_id
    async with engine.connect() as conn:
        result = await conn.execute(select(key, model.locked_by, model.locked_until))
        return {row[0]: (row.locked_by, row.locked_until) for row in result}


def held(by_key: dict[str, tuple[Any, ...]], owner: str) -> set[str]:
    return {key for key, (locked_by, _) in by_key.items() if locked_by == owner}


async def platform_rows(engine: AsyncEngine, model: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(select(model.__table__).order_by("id"))]


async def bookkeeping(engine: AsyncEngine, model: Any) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(model.__table__))).all()
    key = "streaming_id" if model is VideoCheck else "email_id"
    return {getattr(row, key): row for row in rows}


# -- claiming -------------------------------------------------------------------------------------


async def test_lease_due_rows_leases_every_due_row_and_stamps_its_check(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    due = await add_videos(engine, 10)
    await add_videos(engine, 3, status="ready")
    await add_videos(engine, 2, status="error")
    await add_videos(engine, 2, provider="mux")
    await add_videos(engine, 2, deleted_at=T0 - timedelta(days=1))
    before = await platform_rows(engine, Streaming)

    leased = await lease_due_rows(engine, tables, owner="run-a", lease=LEASE, now=T0)

    assert leased == 10
    assert await platform_rows(engine, Streaming) == before  # the lease is ours, not theirs
    # Each due row got its check row, made by the claim; a row that is not due got none.
    assert await leases(engine) == dict.fromkeys(keys(due), ("run-a", T0 + LEASE))
    checks = await bookkeeping(engine, VideoCheck)
    assert {(c.attempts, c.checked_at, c.error_reason) for c in checks.values()} == {
        (0, None, None)
    }


async def test_claim_fresh_takes_due_emails_up_to_the_limit_and_stamps_the_delivery(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    ids = await add_emails(engine, 10)
    await add_emails(engine, 3, status="sent", sent_at=T0 - timedelta(hours=2))
    before = await platform_rows(engine, EmailQueue)

    rows = await claim_fresh(engine, tables, owner="run-a", lease=LEASE, limit=4, now=T0)

    assert await platform_rows(engine, EmailQueue) == before

    assert [r.id for r in rows] == sorted(keys(ids[:4]))  # oldest first, returned by id
    assert {(r.status, r.attempts, r.idempotency_key) for r in rows} == {("pending", 0, None)}
    assert [r.to_address for r in rows] == [f"u{i}@example.com" for i in range(4)]
    # The claim made the delivery rows; the sent emails and the rest of the queue got none.
    assert await leases(engine, EmailDelivery) == dict.fromkeys(
        keys(ids[:4]), ("run-a", T0 + LEASE)
    )
    deliveries = await bookkeeping(engine, EmailDelivery)
    assert {(d.status, d.attempts, d.next_attempt_at) for d in deliveries.values()} == {
        ("pending", 0, T0)
    }


async def test_a_claim_keeps_the_bookkeeping_a_row_already_has(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    """A row checked before keeps its attempts and check time; only the lease is new. A row
    someone holds stays theirs."""
    never, checked, taken = await add_videos(engine, 3)
    async with engine.begin() as conn:
        await conn.execute(
            insert(VideoCheck),
            [
                {
                    "streaming_id": str(checked),
                    "attempts": 2,
                    "checked_at": T0 - LEASE,
                    "locked_by": None,
                    "locked_until": None,
                },
                {
                    "streaming_id": str(taken),
                    "attempts": 0,
                    "checked_at": None,
                    "locked_by": "other",
                    "locked_until": T0 + LEASE,
                },
            ],
        )

    assert await lease_due_rows(engine, tables, owner="run-a", lease=LEASE, now=T0) == 2

    checks = await bookkeeping(engine, VideoCheck)
    assert (checks[str(never)].attempts, checks[str(never)].locked_by) == (0, "run-a")
    assert (checks[str(checked)].attempts, checks[str(checked)].checked_at) == (2, T0 - LEASE)
    assert checks[str(checked)].locked_by == "run-a"
    assert (checks[str(taken)].locked_by, checks[str(taken)].locked_until) == ("other", T0 + LEASE)


async def test_claim_fresh_takes_only_deliveries_that_are_due(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    """A retry waits for its time, a stamped row belongs to its group, a finished one is done."""
    new, retry_due, retry_later, grouped, finished = await add_emails(engine, 5)
    async with engine.begin() as conn:
        await conn.execute(
            insert(EmailDelivery),
            [
                {"email_id": str(retry_due), "status": "failed", "attempts": 1,
                 "last_error": "503", "idempotency_key": None,
                 "next_attempt_at": T0 - timedelta(seconds=1)},
                {"email_id": str(retry_later), "status": "failed", "attempts": 1,
                 "last_error": "503", "idempotency_key": None,
                 "next_attempt_at": T0 + timedelta(seconds=1)},
                {"email_id": str(grouped), "status": "sending", "attempts": 0,
                 "last_error": None, "idempotency_key": "k" * 64,
                 "next_attempt_at": T0 - LEASE},
                {"email_id": str(finished), "status": "sent", "attempts": 1,
                 "last_error": None, "idempotency_key": None,
                 "next_attempt_at": T0 - LEASE},
            ],
        )  # fmt: skip

    rows = await claim_fresh(engine, tables, owner="run-a", lease=LEASE, limit=10, now=T0)

    by_id = {r.id: r for r in rows}
    assert set(by_id) == keys([new, retry_due])
    # The retry is claimed as it stands: its attempts and error are what the next send builds on.
    assert (by_id[str(retry_due)].status, by_id[str(retry_due)].attempts) == ("failed", 1)
    assert by_id[str(retry_due)].last_error == "503"
    assert held(await leases(engine, EmailDelivery), "run-a") == keys([new, retry_due])


async def test_a_second_claimer_gets_only_what_the_first_did_not(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    ids = await add_emails(engine, 10)
    first = await claim_fresh(engine, tables, owner="a", lease=LEASE, limit=6, now=T0)
    second = await claim_fresh(engine, tables, owner="b", lease=LEASE, limit=6, now=T0)
    third = await claim_fresh(engine, tables, owner="c", lease=LEASE, limit=6, now=T0)
    assert len(first) == 6
    assert len(second) == 4
    assert third == []
    assert {r.id for r in first} | {r.id for r in second} == keys(ids)
    assert {r.id for r in first}.isdisjoint(r.id for r in second)

    videos = await add_videos(engine, 6)
    assert await lease_due_rows(engine, tables, owner="a", lease=LEASE, now=T0) == 6
    more = await add_videos(engine, 4)
    assert await lease_due_rows(engine, tables, owner="b", lease=LEASE, now=T0) == 4
    assert await lease_due_rows(engine, tables, owner="c", lease=LEASE, now=T0) == 0
    by_key = await leases(engine)
    assert (held(by_key, "a"), held(by_key, "b")) == (keys(videos), keys(more))


async def test_an_expired_lease_makes_rows_claimable_again_and_not_before(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    videos = await add_videos(engine, 5)
    emails = await add_emails(engine, 5)
    assert await lease_due_rows(engine, tables, owner="crashed", lease=LEASE, now=T0) == 5
    crashed = await claim_fresh(engine, tables, owner="crashed", lease=LEASE, limit=5, now=T0)
    assert len(crashed) == 5

    just_before = T0 + LEASE - timedelta(seconds=1)
    assert await lease_due_rows(engine, tables, owner="next", lease=LEASE, now=just_before) == 0
    assert await claim_fresh(
        engine, tables, owner="next", lease=LEASE, limit=5, now=just_before
    ) == []  # fmt: skip

    after = T0 + LEASE + timedelta(seconds=1)
    assert await lease_due_rows(engine, tables, owner="next", lease=LEASE, now=after) == 5
    late = await claim_fresh(engine, tables, owner="next", lease=LEASE, limit=5, now=after)
    assert {r.id for r in late} == keys(emails)
    assert await leases(engine) == dict.fromkeys(keys(videos), ("next", after + LEASE))
    assert await leases(engine, EmailDelivery) == dict.fromkeys(
        keys(emails), ("next", after + LEASE)
    )


CLAIMER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta
    from sqlalchemy import select
    from alianza_jobs.db.engine import create_engine
    from alianza_jobs.db.platform_tables import platform_tables
    from alianza_jobs.db.schema_map import default_map
    from alianza_jobs.defs.videos.queue_sql import CHECKS, lease_due_rows

    async def main() -> None:
        engine = create_engine(sys.argv[1])
        tables = await platform_tables(engine, default_map())
        await lease_due_rows(
            engine, tables, owner="doomed", lease=timedelta(seconds=float(sys.argv[2]))
        )
        async with engine.connect() as conn:
            mine = await conn.scalars(
                select(CHECKS.c.streaming_id).where(CHECKS.c.locked_by == "doomed")
            )
            print(",".join(mine), flush=True)
        await asyncio.Event().wait()  # "processing" the batch until it is killed

    asyncio.run(main())
    """
)


async def test_rows_of_a_killed_claimer_come_back_once_its_lease_passes(
    engine: AsyncEngine, tables: PlatformTables, database_url: str
) -> None:
    ids = await add_videos(engine, 40)
    lease_s = 4.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLAIMER, database_url, str(lease_s),
        stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode().strip()
    finally:
        proc.kill()  # SIGKILL mid-batch: no finally, no release, the lease stays behind
        await proc.wait()
    assert set(line.split(",")) == keys(ids)

    by_key = await leases(engine)
    assert {owner for owner, _ in by_key.values()} == {"doomed"}
    lease_end = min(until for _, until in by_key.values())

    async def survivor_leases(now: datetime) -> int:
        return await lease_due_rows(engine, tables, owner="survivor", lease=LEASE, now=now)

    # The survivor's clock is set, not waited for: a moment before the lease ends it gets
    # nothing, from the moment it ends every row.
    assert await survivor_leases(lease_end - timedelta(milliseconds=1)) == 0  # the lease holds
    assert await survivor_leases(lease_end) == len(ids)
    # Claimed at the lease's end, every row, and nothing is left to the dead claimer.
    assert await leases(engine) == dict.fromkeys(keys(ids), ("survivor", lease_end + LEASE))


async def _settle_videos(conn: AsyncConnection, written: list[Any]) -> None:
    # The platform half of the write: settled rows are no longer due.
    settled = [int(k) for k in written]
    await conn.execute(update(Streaming).where(Streaming.id.in_(settled)).values(status="ready"))


async def test_concurrent_video_claimers_never_share_a_row_and_miss_none(
    engine: AsyncEngine, tables: PlatformTables, database_url: str
) -> None:
    """8 claimers, each with its own engine (as separate runs would be), lease at once (a barrier
    lines them up) and settle what they got until nothing is due: 10,000 rows."""
    total, claimers = 10_000, 8
    ids = await add_videos(engine, total)
    leased: dict[str, int] = {}
    got: dict[str, set[str]] = {}
    start = asyncio.Barrier(claimers)

    async def claimer(name: str) -> None:
        own = create_engine(database_url)
        own_tables = await platform_tables(own, default_map())
        leased[name], got[name] = 0, set()
        try:
            await start.wait()
            while n := await lease_due_rows(own, own_tables, owner=name, lease=LEASE):
                leased[name] += n
                async with own.connect() as conn:
                    mine = set(
                        await conn.scalars(
                            select(CHECKS.c.streaming_id).where(CHECKS.c.locked_by == name)
                        )
                    )
                assert len(mine) == n, "the count is not what the claimer holds"
                assert mine.isdisjoint(got[name])
                got[name] |= mine
                now = utcnow()
                written = await write_rows(
                    own, CHECKS, owner=name,
                    changes=[{"id": k, "attempts": 1, "checked_at": now} for k in mine],
                    also=_settle_videos,
                )  # fmt: skip
                assert set(written) == mine
        finally:
            await own.dispose()

    started = time.perf_counter()
    await asyncio.gather(*(claimer(f"claimer-{n}") for n in range(claimers)))
    elapsed = time.perf_counter() - started

    everything = [k for mine in got.values() for k in mine]
    assert len(everything) == len(set(everything)), "a row was handed to two claimers"
    assert set(everything) == keys(ids), "a due row was never claimed"
    assert sum(leased.values()) == total
    assert await count(engine, Streaming, Streaming.status == "ready") == total
    assert await count(engine, VideoCheck, VideoCheck.attempts == 1) == total
    assert await count(engine, VideoCheck, VideoCheck.locked_by.is_not(None)) == 0
    shares = sorted(len(mine) for mine in got.values())
    print(f"\n{engine.dialect.name}: {claimers} video claimers leased {total} rows in "
          f"{elapsed:.2f} s; rows per claimer {shares}")  # fmt: skip


async def test_concurrent_email_workers_claim_each_row_exactly_once(
    engine: AsyncEngine, tables: PlatformTables, database_url: str
) -> None:
    """8 claim_fresh workers, each with its own engine, drain 10,000 due emails 100 at a time."""
    total, workers, batch = 10_000, 8, 100
    ids = await add_emails(engine, total)
    got: dict[str, list[str]] = {}

    async def worker(name: str) -> None:
        own = create_engine(database_url)
        own_tables = await platform_tables(own, default_map())
        mine: list[str] = []

        async def sent_on_the_platform(conn: AsyncConnection, written: list[Any]) -> None:
            e = own_tables.email_queue
            await conn.execute(update(e).where(e.c.id.in_(written)).values(status="sent"))

        try:
            while rows := await claim_fresh(
                own, own_tables, owner=name, lease=LEASE, limit=batch, now=utcnow()
            ):
                assert len(rows) <= batch
                mine += [r.id for r in rows]
                now = utcnow()
                written = await write_rows(
                    own, DELIVERIES, owner=name,
                    changes=[{"id": r.id, "status": "sent", "sent_at": now} for r in rows],
                    also=sent_on_the_platform,
                )  # fmt: skip
                assert set(written) == {r.id for r in rows}
        finally:
            await own.dispose()
        got[name] = mine

    started = time.perf_counter()
    await asyncio.gather(*(worker(f"worker-{n}") for n in range(workers)))
    elapsed = time.perf_counter() - started

    everything = [i for mine in got.values() for i in mine]
    assert len(everything) == len(set(everything)), "an email was claimed twice"
    assert set(everything) == keys(ids), "a due email was never claimed"
    assert await count(engine, EmailQueue, EmailQueue.status == "sent") == total
    assert await count(engine, EmailDelivery, EmailDelivery.status == "sent") == total
    assert await count(engine, EmailDelivery, EmailDelivery.locked_by.is_not(None)) == 0
    shares = sorted(len(mine) for mine in got.values())
    print(f"\n{engine.dialect.name}: {workers} email workers drained {total} rows in "
          f"{elapsed:.2f} s; rows per worker {shares}")  # fmt: skip
    if engine.dialect.name == "postgresql":
        assert sum(1 for n in shares if n) >= 2, "claims should proceed side by side"


# -- on the platform's own (Drizzle) schema -------------------------------------------------------


def _raw_ids(url: str, statement: str) -> list[str]:
    with psycopg.connect(url) as conn:
        ids = [str(row[0]) for row in conn.execute(statement.encode())]
        conn.commit()
    return ids


async def test_claims_on_the_drizzle_schema_take_uuid_keyed_rows(postgres_url: str) -> None:
    """uuid ids, enum statuses, a ``to`` column: each claim makes its bookkeeping rows keyed by
    the uuid's text, and a second claim finds them taken."""
    create_drizzle_platform_schema(postgres_url)
    videos = _raw_ids(
        postgres_url,
        "INSERT INTO streamings (external_id) SELECT 'uid-' || n FROM generate_series(1, 5) n"
        " RETURNING id",
    )
    _raw_ids(
        postgres_url,
        "INSERT INTO streamings (external_id, status) VALUES ('x', 'ready') RETURNING id",
    )
    emails = _raw_ids(
        postgres_url,
        "INSERT INTO email_queue (\"to\", subject, created_at) SELECT 'u' || n || '@example.com',"
        " 'Hola', now() - make_interval(mins => 10 - n) FROM generate_series(1, 4) n RETURNING id",
    )
    _raw_ids(
        postgres_url,
        "INSERT INTO email_queue (\"to\", subject, status) VALUES ('s@example.com', 'x', 'sent')"
        " RETURNING id",
    )
    engine = create_engine(postgres_url)
    try:
        await migrate.upgrade(engine)
        tables = await platform_tables(engine, load_schema_map(DRIZZLE_SCHEMA_MAP))
        now = utcnow()

        assert await lease_due_rows(engine, tables, owner="a", lease=LEASE, now=now) == 5
        assert await lease_due_rows(engine, tables, owner="b", lease=LEASE, now=now) == 0
        assert await leases(engine) == dict.fromkeys(videos, ("a", now + LEASE))

        rows = await claim_fresh(engine, tables, owner="a", lease=LEASE, limit=10, now=now)
        assert [r.id for r in rows] == sorted(emails)
        assert {r.id: r.to_address for r in rows} == {
            i: f"u{n}@example.com" for n, i in enumerate(emails, start=1)
        }
        assert await claim_fresh(engine, tables, owner="b", lease=LEASE, limit=10, now=now) == []
        assert await leases(engine, EmailDelivery) == dict.fromkeys(emails, ("a", now + LEASE))
    finally:
        await engine.dispose()


# -- writing and releasing ----------------------------------------------------------------------


async def test_write_rows_is_guarded_by_the_lease_owner(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    ids = await add_videos(engine, 4)
    ours = [str(i) for i in ids]
    await lease_due_rows(engine, tables, owner="slow", lease=LEASE, now=T0)
    # slow's lease ran out; fast leased two of the rows since.
    later = T0 + LEASE * 2
    async with engine.begin() as conn:
        await conn.execute(
            update(VideoCheck)
            .where(VideoCheck.streaming_id.in_(ours[:2]))
            .values(locked_by="fast", locked_until=later + LEASE)
        )
    also_got: list[list[Any]] = []

    async def errored_on_the_platform(conn: AsyncConnection, written: list[Any]) -> None:
        also_got.append(sorted(written))
        errored = [int(k) for k in written]
        await conn.execute(
            update(Streaming).where(Streaming.id.in_(errored)).values(status="error")
        )

    written = await write_rows(
        engine, VideoCheck, owner="slow",
        changes=[{"id": k, "error_reason": "late", "checked_at": later} for k in ours],
        also=errored_on_the_platform,
    )  # fmt: skip
    assert written == sorted(ours[2:])
    assert also_got == [sorted(ours[2:])]  # the platform half gets only the rows written
    checks = await bookkeeping(engine, VideoCheck)
    assert [checks[k].error_reason for k in ours] == [None, None, "late", "late"]
    assert [checks[k].locked_by for k in ours] == ["fast", "fast", None, None]
    async with engine.connect() as conn:
        statuses = dict((await conn.execute(select(Streaming.id, Streaming.status))).all())
    assert [statuses[i] for i in ids] == ["queued", "queued", "error", "error"]


async def test_write_rows_groups_rows_that_change_different_columns(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    ids = await add_videos(engine, 3)
    ours = [str(i) for i in ids]
    await lease_due_rows(engine, tables, owner="a", lease=LEASE)
    checked = datetime(2025, 6, 1, 13, 0, tzinfo=UTC)
    written = await write_rows(
        engine,
        VideoCheck,
        owner="a",
        changes=[
            {"id": ours[0], "attempts": 1, "checked_at": checked},
            {"id": ours[1], "error_reason": "codec", "checked_at": checked},
            {"id": ours[2], "attempts": 3},
        ],
    )
    assert written == sorted(ours)
    checks = await bookkeeping(engine, VideoCheck)
    assert [(checks[k].attempts, checks[k].error_reason, checks[k].checked_at) for k in ours] == [
        (1, None, checked),
        (0, "codec", checked),
        (3, None, None),
    ]
    assert {checks[k].locked_by for k in ours} == {None}


async def test_write_rows_without_release_keeps_the_lease(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    await add_emails(engine, 3)
    rows = await claim_fresh(engine, tables, owner="a", lease=LEASE, limit=3, now=T0)
    key = "batch-" + "0" * 58
    written = await write_rows(
        engine, EmailDelivery, owner="a",
        changes=[{"id": r.id, "idempotency_key": key} for r in rows], release=False,
    )  # fmt: skip
    assert len(written) == 3
    async with engine.connect() as conn:
        result = await conn.execute(select(EmailDelivery.idempotency_key, EmailDelivery.locked_by))
        assert set(result) == {(key, "a")}


async def test_release_touches_only_the_owners_rows(
    engine: AsyncEngine, tables: PlatformTables
) -> None:
    mine = [str(i) for i in await add_videos(engine, 3)]
    await lease_due_rows(engine, tables, owner="a", lease=LEASE)
    theirs = [str(i) for i in await add_videos(engine, 3)]
    await lease_due_rows(engine, tables, owner="b", lease=LEASE)
    assert await release_rows(engine, VideoCheck, owner="a", ids=[mine[0], theirs[0]]) == 1
    assert await release_rows(engine, VideoCheck, owner="a") == 2
    by_key = await leases(engine)
    assert [by_key[k] for k in mine] == [(None, None)] * 3
    assert [by_key[k][0] for k in theirs] == ["b", "b", "b"]


# -- which bulk form ------------------------------------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


@pytest.mark.parametrize("history", ["checked before", "never checked"])
async def test_bulk_write_plan_holds_on_statistics_from_before_the_claim(
    postgres_url: str, history: str
) -> None:
    """Right after a claim the planner's statistics still say `locked_by` is null everywhere (the
    rows were checked before) or that video_checks is empty (a new queue), so an UPDATE filtering
    on `locked_by` is planned for one owned row; in the video benchmark it then nested-looped every
    owned row against the whole batch (655 ms a 770-row page at 10,000 rows). The bulk write must
    be planned for the rows it writes."""
    async with migrated_engine(postgres_url) as engine:
        ids = await add_videos(engine, 10_000)
        async with engine.begin() as conn:
            if history == "checked before":
                await conn.execute(
                    insert(VideoCheck),
                    [{"streaming_id": str(i), "attempts": 1, "checked_at": T0} for i in ids],
                )
            # Statistics as a live queue has them: gathered before this run's claim.
            for table in ("streamings", "video_checks"):
                await conn.exec_driver_sql(
                    f"ALTER TABLE {table} SET (autovacuum_enabled = off, "
                    "toast.autovacuum_enabled = off)"
                )
                await conn.exec_driver_sql(f"ANALYZE {table}")
        tables = await platform_tables(engine, default_map())
        assert await lease_due_rows(engine, tables, owner="run-1", lease=LEASE) == 10_000

        statements: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE") and "unnest" in statement:
                statements.append((statement, params))

        page = [
            {"id": str(i), "attempts": 1 + i % 3, "error_reason": None if i % 2 else f"codec {i}",
             "checked_at": T0}
            for i in ids[:770]
        ]  # fmt: skip
        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        written = await write_rows(engine, VideoCheck, owner="run-1", changes=page)
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
        assert set(written) == keys(ids[:770])

        [(statement, params)] = statements
        async with engine.begin() as conn:
            result = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params)
            [[explained]] = result.all()
            await conn.rollback()
        plan = explained[0]["Plan"]
        shown = json.dumps(plan, indent=1)
        # The planner knows roughly how many rows the write joins (whichever join it picks, it is
        # costed for them), and none is matched by a per-pair join filter.
        [join] = plan["Plans"]
        assert join["Plan Rows"] >= len(page) / 2, shown
        assert not [n for n in _plan_nodes(plan) if "Join Filter" in n], shown


async def _update_from_values(
    conn: Any, table: Any, owner: str, columns: tuple[str, ...], rows: list[dict[str, Any]]
) -> list[str]:
    """The form claims.py measured and rejected: UPDATE ... FROM (VALUES (...), ...) AS v."""
    written: list[str] = []
    key = claims._key(table)
    # An all-NULL column has no type Postgres can infer inside VALUES: set it directly.
    nulls = {c: None for c in columns if all(row[c] is None for row in rows)}
    names = ["id", *(c for c in columns if c not in nulls)]
    for start in range(0, len(rows), 30_000 // len(names)):
        chunk = rows[start : start + 30_000 // len(names)]
        data = sql_values(
            *(column(k, claims._column(table, k).type) for k in names), name="v"
        ).data([tuple(row[k] for k in names) for row in chunk])
        stmt = (
            update(table)
            .where(key == data.c.id, table.c.locked_by == owner)
            .values({**{k: data.c[k] for k in names[1:]}, **nulls})
            .returning(key)
        )
        written += list((await conn.scalars(stmt)).all())
    return written


async def test_bulk_forms_timing(postgres_url: str) -> None:
    """Times the bulk write forms for 10,000 video_checks rows on Postgres (claims.py records the
    choice). Every form must write every row it owns and nothing else."""
    async with migrated_engine(postgres_url) as engine:
        ours = [str(i) for i in await add_videos(engine, 10_000)]
        tables = await platform_tables(engine, default_map())
        assert await lease_due_rows(engine, tables, owner="bench", lease=LEASE) == 10_000
        now = datetime.now(UTC)
        changes = [
            {"id": k, "attempts": n % 5, "error_reason": None if n % 2 else f"codec {n}",
             "checked_at": now, "locked_until": None, "locked_by": None}
            for n, k in enumerate(ours)
        ]  # fmt: skip
        columns = tuple(sorted(k for k in changes[0] if k != "id"))
        forms: dict[str, Any] = {
            "unnest arrays (chosen)": claims._update_from_arrays,
            "executemany": claims._update_executemany,
            "FROM VALUES": _update_from_values,
        }
        timings: dict[str, float] = {}
        for name, form in forms.items():
            async with engine.begin() as conn:
                await conn.execute(
                    update(VideoCheck).values(
                        locked_by="bench", attempts=0, error_reason=None, checked_at=None
                    )
                )
                await conn.execute(
                    update(VideoCheck)
                    .where(VideoCheck.streaming_id == ours[0])
                    .values(locked_by="other")
                )
            started = time.perf_counter()
            async with engine.begin() as conn:
                # As write_rows does: the rows still ours, locked, then one bulk form writes them.
                mine = await claims._lock_owned(conn, CHECKS, "bench", changes)
                written = await form(conn, CHECKS, "bench", columns, mine)
            timings[name] = time.perf_counter() - started
            assert set(written) == set(ours[1:]), name  # ours[0] belongs to another owner
            errored = sum(1 for n in range(1, len(ours)) if n % 2 == 0)
            assert (
                await count(engine, VideoCheck, VideoCheck.error_reason.is_not(None)) == errored
            ), name
            assert await count(engine, VideoCheck, VideoCheck.checked_at == now) == 9_999, name
            assert await count(engine, VideoCheck, VideoCheck.locked_by.is_(None)) == 9_999, name
    print(
        "\nbulk write of 10,000 video_checks rows on Postgres: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in timings.items())
    )
    assert timings["unnest arrays (chosen)"] < timings["FROM VALUES"]
