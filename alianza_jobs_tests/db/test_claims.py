"""Claims with leases: no row is handed to two claimers, and no row is lost when a claimer dies."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import column, event, insert, select, update
from sqlalchemy import values as sql_values
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db import claims
from alianza_jobs.db.claims import claim_rows, release_rows, write_rows
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import EmailQueue, EmailStatus, Streaming, StreamingStatus
from alianza_jobs_tests.conftest import REPO
from alianza_jobs_tests.db.helpers import count, migrated_engine

LEASE = timedelta(minutes=5)
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
QUEUED = Streaming.status == StreamingStatus.QUEUED.value


async def add_videos(engine: AsyncEngine, n: int, **overrides: Any) -> list[int]:
    rows = [
        {"external_id": f"{i:032x}", "provider": "cloudflare", "status": "queued", **overrides}
        for i in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(Streaming), rows)
        return list((await conn.scalars(select(Streaming.id).order_by(Streaming.id))).all())


async def add_emails(engine: AsyncEngine, n: int) -> None:
    rows = [
        {"to_address": f"u{i}@example.com", "subject": "Hola", "text": "hola", "status": "pending"}
        for i in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(EmailQueue), rows)


async def lease_of(engine: AsyncEngine, model: Any = Streaming) -> dict[int, tuple[Any, ...]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(model.id, model.locked_by, model.locked_until))
        return {row.id: (row.locked_by, row.locked_until) for row in result}


# -- claiming -------------------------------------------------------------------------------------


async def test_claim_takes_due_rows_up_to_the_limit_and_stamps_the_lease(
    engine: AsyncEngine,
) -> None:
    ids = await add_videos(engine, 10)
    await add_videos(engine, 3, status="ready")  # not due
    rows = await claim_rows(
        engine, Streaming, owner="run-a", lease=LEASE, limit=4, due=QUEUED,
        order_by=[Streaming.id], now=T0,
    )  # fmt: skip
    assert [r.id for r in rows] == ids[:4]
    assert all(r.locked_by == "run-a" and r.locked_until == T0 + LEASE for r in rows)
    leases = await lease_of(engine)
    assert {i for i, (owner, _) in leases.items() if owner == "run-a"} == set(ids[:4])


async def test_a_second_claimer_gets_only_what_the_first_did_not(engine: AsyncEngine) -> None:
    ids = await add_videos(engine, 10)
    first = await claim_rows(engine, Streaming, owner="a", lease=LEASE, limit=6, due=QUEUED, now=T0)
    second = await claim_rows(
        engine, Streaming, owner="b", lease=LEASE, limit=6, due=QUEUED, now=T0
    )
    third = await claim_rows(engine, Streaming, owner="c", lease=LEASE, limit=6, due=QUEUED, now=T0)
    assert len(first) == 6
    assert len(second) == 4
    assert third == []
    assert sorted(r.id for r in first + second) == ids


async def test_claim_can_set_extra_values(engine: AsyncEngine) -> None:
    await add_emails(engine, 3)
    rows = await claim_rows(
        engine,
        EmailQueue,
        owner="a",
        lease=LEASE,
        limit=10,
        due=EmailQueue.status == EmailStatus.PENDING.value,
        values={"status": EmailStatus.SENDING.value, "attempts": EmailQueue.attempts + 1},
    )
    assert {(r.status, r.attempts) for r in rows} == {("sending", 1)}


async def test_an_expired_lease_makes_rows_claimable_again_and_not_before(
    engine: AsyncEngine,
) -> None:
    ids = await add_videos(engine, 5)
    crashed = await claim_rows(
        engine, Streaming, owner="crashed", lease=LEASE, limit=5, due=QUEUED, now=T0
    )
    assert len(crashed) == 5

    just_before = T0 + LEASE - timedelta(seconds=1)
    early = await claim_rows(
        engine, Streaming, owner="next", lease=LEASE, limit=5, due=QUEUED, now=just_before
    )
    assert early == []

    after = T0 + LEASE + timedelta(seconds=1)
    late = await claim_rows(
        engine, Streaming, owner="next", lease=LEASE, limit=5, due=QUEUED, now=after
    )
    assert [r.id for r in late] == ids
    assert all(r.locked_by == "next" and r.locked_until == after + LEASE for r in late)


CLAIMER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta
    from alianza_jobs.db.claims import claim_rows
    from alianza_jobs.db.models import Streaming
    from alianza_jobs.db.engine import create_engine

    async def main() -> None:
        engine = create_engine(sys.argv[1])
        rows = await claim_rows(
            engine, Streaming, owner="doomed", lease=timedelta(seconds=float(sys.argv[2])),
            limit=1000, due=Streaming.status == "queued",
        )
        print(",".join(str(row.id) for row in rows), flush=True)
        await asyncio.Event().wait()  # "processing" the batch until it is killed

    asyncio.run(main())
    """
)


async def test_rows_of_a_killed_claimer_come_back_once_its_lease_passes(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await add_videos(engine, 40)
    lease_s = 4.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLAIMER, database_url, str(lease_s),
        stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode().strip()
    finally:
        proc.kill()  # SIGKILL mid-batch: no finally, no release, the lease stays behind
        await proc.wait()
    assert sorted(int(i) for i in line.split(",")) == ids

    leases = await lease_of(engine)
    assert {owner for owner, _ in leases.values()} == {"doomed"}
    lease_end = min(until for _, until in leases.values())

    async def survivor_claims(now: datetime) -> list[Streaming]:
        return await claim_rows(
            engine, Streaming, owner="survivor", lease=LEASE, limit=1000, due=QUEUED, now=now
        )

    # The survivor's clock is set, not waited for: a moment before the lease ends it gets
    # nothing, from the moment it ends every row.
    assert await survivor_claims(lease_end - timedelta(milliseconds=1)) == []  # the lease holds
    got = await survivor_claims(lease_end)
    assert all(r.locked_until == lease_end + LEASE for r in got)  # claimed at the lease's end
    assert [r.id for r in got] == ids
    assert {owner for owner, _ in (await lease_of(engine)).values()} == {"survivor"}


async def test_concurrent_claimers_never_share_a_row_and_miss_none(
    engine: AsyncEngine, database_url: str
) -> None:
    """8 claimers, each with its own engine (as separate runs would be), drain 10,000 due rows."""
    total, claimers, batch = 10_000, 8, 100
    ids = await add_videos(engine, total)
    got: dict[str, list[int]] = {}

    async def claimer(name: str) -> None:
        own = create_engine(database_url)
        mine: list[int] = []
        try:
            while rows := await claim_rows(
                own, Streaming, owner=name, lease=LEASE, limit=batch, due=QUEUED
            ):
                mine += [r.id for r in rows]
                written = await write_rows(
                    own, Streaming, owner=name,
                    changes=[{"id": r.id, "status": "ready", "duration": 1.5} for r in rows],
                )  # fmt: skip
                assert written == sorted(r.id for r in rows)
        finally:
            await own.dispose()
        got[name] = mine

    started = time.perf_counter()
    await asyncio.gather(*(claimer(f"claimer-{n}") for n in range(claimers)))
    elapsed = time.perf_counter() - started

    everything = [i for mine in got.values() for i in mine]
    assert len(everything) == len(set(everything)), "a row was handed to two claimers"
    assert sorted(everything) == ids, "a due row was never claimed"
    assert await count(engine, Streaming, Streaming.status == "ready") == total
    assert await count(engine, Streaming, Streaming.locked_by.is_not(None)) == 0
    shares = sorted(len(mine) for mine in got.values())
    print(f"\n{engine.dialect.name}: {claimers} claimers drained {total} rows in {elapsed:.2f} s; "
          f"rows per claimer {shares}")  # fmt: skip
    if engine.dialect.name == "postgresql":
        assert sum(1 for n in shares if n) >= 2, "claims should proceed side by side"


# -- writing and releasing ----------------------------------------------------------------------


async def test_write_rows_is_guarded_by_the_lease_owner(engine: AsyncEngine) -> None:
    ids = await add_videos(engine, 4)
    await claim_rows(engine, Streaming, owner="slow", lease=LEASE, limit=4, due=QUEUED, now=T0)
    # slow's lease ran out; fast claimed two of the rows since.
    later = T0 + LEASE * 2
    async with engine.begin() as conn:
        await conn.execute(
            update(Streaming)
            .where(Streaming.id.in_(ids[:2]))
            .values(locked_by="fast", locked_until=later + LEASE)
        )
    written = await write_rows(
        engine, Streaming, owner="slow",
        changes=[{"id": i, "status": "error", "error_reason": "late"} for i in ids],
    )  # fmt: skip
    assert written == ids[2:]
    async with engine.connect() as conn:
        rows = {r.id: r for r in await conn.execute(select(Streaming))}
    assert [rows[i].status for i in ids] == ["queued", "queued", "error", "error"]
    assert [rows[i].locked_by for i in ids] == ["fast", "fast", None, None]


async def test_write_rows_groups_rows_that_change_different_columns(engine: AsyncEngine) -> None:
    ids = await add_videos(engine, 3)
    await claim_rows(engine, Streaming, owner="a", lease=LEASE, limit=3, due=QUEUED)
    checked = datetime(2025, 6, 1, 13, 0, tzinfo=UTC)
    written = await write_rows(
        engine,
        Streaming,
        owner="a",
        changes=[
            {"id": ids[0], "status": "ready", "duration": 12.5, "checked_at": checked},
            {"id": ids[1], "status": "error", "error_reason": "codec", "checked_at": checked},
            {"id": ids[2], "attempts": 1, "checked_at": checked},
        ],
    )
    assert written == ids
    async with engine.connect() as conn:
        rows = {r.id: r for r in await conn.execute(select(Streaming))}
    assert (rows[ids[0]].status, rows[ids[0]].duration) == ("ready", 12.5)
    assert (rows[ids[1]].status, rows[ids[1]].error_reason) == ("error", "codec")
    assert (rows[ids[2]].status, rows[ids[2]].attempts) == ("queued", 1)
    assert {rows[i].checked_at for i in ids} == {checked}
    assert {rows[i].locked_by for i in ids} == {None}


async def test_write_rows_without_release_keeps_the_lease(engine: AsyncEngine) -> None:
    await add_emails(engine, 3)
    rows = await claim_rows(
        engine, EmailQueue, owner="a", lease=LEASE, limit=3, due=EmailQueue.status == "pending",
        now=T0,
    )  # fmt: skip
    key = "batch-" + "0" * 58
    written = await write_rows(
        engine, EmailQueue, owner="a",
        changes=[{"id": r.id, "idempotency_key": key} for r in rows], release=False,
    )  # fmt: skip
    assert len(written) == 3
    async with engine.connect() as conn:
        result = await conn.execute(select(EmailQueue.idempotency_key, EmailQueue.locked_by))
        assert set(result) == {(key, "a")}


async def test_release_touches_only_the_owners_rows(engine: AsyncEngine) -> None:
    await add_videos(engine, 6)
    mine = await claim_rows(engine, Streaming, owner="a", lease=LEASE, limit=3, due=QUEUED)
    theirs = await claim_rows(engine, Streaming, owner="b", lease=LEASE, limit=3, due=QUEUED)
    assert await release_rows(engine, Streaming, owner="a", ids=[mine[0].id, theirs[0].id]) == 1
    assert await release_rows(engine, Streaming, owner="a") == 2
    owners = {i: owner for i, (owner, _) in (await lease_of(engine)).items()}
    assert [owners[r.id] for r in mine] == [None, None, None]
    assert [owners[r.id] for r in theirs] == ["b", "b", "b"]


# -- which bulk form ------------------------------------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


async def test_bulk_write_plan_holds_on_statistics_from_before_the_claim(postgres_url: str) -> None:
    """Right after a claim the planner's statistics still say `locked_by` is null everywhere, so an
    UPDATE filtering on `locked_by` is planned for one owned row; in the video benchmark it then
    nested-looped every owned row against the whole batch (655 ms a 770-row page at 10,000 rows).
    The bulk write must be planned for the rows it writes."""
    async with migrated_engine(postgres_url) as engine:
        ids = await add_videos(engine, 10_000)
        async with engine.begin() as conn:
            # Statistics as a live queue has them: gathered before this run's claim.
            await conn.exec_driver_sql(
                "ALTER TABLE streamings SET (autovacuum_enabled = off, "
                "toast.autovacuum_enabled = off)"
            )
            await conn.exec_driver_sql("ANALYZE streamings")
        claimed = await claim_rows(
            engine, Streaming, owner="run-1", lease=timedelta(minutes=5), limit=10_000, due=QUEUED
        )
        assert len(claimed) == 10_000

        statements: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE") and "unnest" in statement:
                statements.append((statement, params))

        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        page = [
            {"id": i, "status": "ready", "duration": float(i % 600), "checked_at": T0}
            for i in ids[:770]
        ]
        written = await write_rows(engine, Streaming, owner="run-1", changes=page)
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
        assert sorted(written) == ids[:770]

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
) -> list[int]:
    """The form claims.py measured and rejected: UPDATE ... FROM (VALUES (...), ...) AS v."""
    written: list[int] = []
    # An all-NULL column has no type Postgres can infer inside VALUES: set it directly.
    nulls = {c: None for c in columns if all(row[c] is None for row in rows)}
    keys = ["id", *(c for c in columns if c not in nulls)]
    for start in range(0, len(rows), 30_000 // len(keys)):
        chunk = rows[start : start + 30_000 // len(keys)]
        data = sql_values(*(column(k, table.c[k].type) for k in keys), name="v").data(
            [tuple(row[k] for k in keys) for row in chunk]
        )
        stmt = (
            update(table)
            .where(table.c.id == data.c.id, table.c.locked_by == owner)
            .values({**{k: data.c[k] for k in keys[1:]}, **nulls})
            .returning(table.c.id)
        )
        written += list((await conn.scalars(stmt)).all())
    return written


async def test_bulk_forms_timing(postgres_url: str) -> None:
    """Times the bulk status write forms for 10,000 rows on Postgres (claims.py records the choice).
    Every form must write every row it owns and nothing else."""
    async with migrated_engine(postgres_url) as engine:
        ids = await add_videos(engine, 10_000)
        now = datetime.now(UTC)
        changes = [
            {"id": i, "status": "ready" if i % 2 else "error", "duration": float(i % 600),
             "error_reason": None if i % 2 else f"codec {i}", "checked_at": now,
             "locked_until": None, "locked_by": None}
            for i in ids
        ]  # fmt: skip
        columns = tuple(sorted(k for k in changes[0] if k != "id"))
        forms = {
            "unnest arrays (chosen)": claims._update_from_arrays,
            "executemany": claims._update_executemany,
            "FROM VALUES": _update_from_values,
        }
        timings: dict[str, float] = {}
        for name, form in forms.items():
            async with engine.begin() as conn:
                await conn.execute(update(Streaming).values(status="queued", locked_by="bench"))
                await conn.execute(
                    update(Streaming).where(Streaming.id == ids[0]).values(locked_by="other")
                )
            started = time.perf_counter()
            async with engine.begin() as conn:
                # As write_rows does: the rows still ours, locked, then one bulk form writes them.
                mine = await claims._lock_owned(conn, Streaming.__table__, "bench", changes)
                written = await form(conn, Streaming.__table__, "bench", columns, mine)
            timings[name] = time.perf_counter() - started
            assert sorted(written) == ids[1:], name  # ids[0] belongs to another owner
            ready = sum(1 for i in ids[1:] if i % 2)
            assert await count(engine, Streaming, Streaming.status == "ready") == ready, name
            assert await count(engine, Streaming, Streaming.locked_by.is_(None)) == 9_999, name
    print(
        "\nbulk status write of 10,000 rows on Postgres: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in timings.items())
    )
    assert timings["unnest arrays (chosen)"] < timings["FROM VALUES"]
