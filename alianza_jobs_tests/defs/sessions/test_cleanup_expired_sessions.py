"""cleanup_expired_sessions: expired sessions and soft-deleted users' sessions go, in bounded
batches; live ones stay; old Dagster runs are pruned. On SQLite and on the real Postgres."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from dagster import (
    DagsterInstance,
    RunsFilter,
    build_op_context,
    job,
    op,
)
from dagster._core.test_utils import freeze_time
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.platform_models import User, UserSession
from alianza_jobs.defs.sessions import cleanup_expired_sessions as task
from alianza_jobs.defs.sessions.cleanup_expired_sessions import (
    CleanupConfig,
    delete_expired_sessions,
)
from alianza_jobs.platform.tags import TAG_JOB
from alianza_jobs.resources import Database
from alianza_jobs_tests.db.helpers import migrated_engine

HOUR = timedelta(hours=1)


async def populate(engine: AsyncEngine) -> dict[str, set[int]]:
    """Two users, one soft-deleted; each with expired and live sessions. Returns ids by kind."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        alive, gone = (
            await conn.execute(
                insert(User).returning(User.id, sort_by_parameter_order=True),
                [
                    {"email": "ana@example.com", "name": "Ana", "deleted_at": None},
                    {"email": "luis@example.com", "name": "Luis", "deleted_at": now - HOUR},
                ],
            )
        ).scalars()
        plan = {
            "alive_expired": (alive, -1, 7),
            "alive_live": (alive, +1, 5),
            "gone_expired": (gone, -1, 4),
            "gone_live": (gone, +1, 3),
        }
        ids: dict[str, set[int]] = {}
        serial = 0
        for kind, (user_id, sign, n) in plan.items():
            rows = []
            for i in range(n):
                serial += 1
                rows.append(
                    {
                        "user_id": user_id,
                        "token_hash": f"{serial:064x}",
                        "expires_at": now + sign * (HOUR + timedelta(minutes=i)),
                    }
                )
            result = await conn.execute(
                insert(UserSession).returning(UserSession.id, sort_by_parameter_order=True), rows
            )
            ids[kind] = set(result.scalars())
    return ids


async def session_ids(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return set((await conn.scalars(select(UserSession.id))).all())


def metadata_of(output: Any) -> dict[str, Any]:
    return {key: value.value for key, value in output.metadata.items()}


async def test_op_deletes_expired_and_soft_deleted_users_sessions(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await populate(engine)
    with build_op_context(resources={"database": Database(url=database_url)}) as context:
        output = await delete_expired_sessions(context, CleanupConfig(batch_size=3))
    meta = metadata_of(output)
    assert meta["expired_deleted"] == 7 + 4
    assert meta["soft_deleted_user_sessions_deleted"] == 3
    assert meta["runs_pruned"] == 0
    assert await session_ids(engine) == ids["alive_live"]


async def test_dry_run_counts_and_deletes_nothing(engine: AsyncEngine, database_url: str) -> None:
    ids = await populate(engine)
    with build_op_context(resources={"database": Database(url=database_url)}) as context:
        output = await delete_expired_sessions(context, CleanupConfig(dry_run=True))
    meta = metadata_of(output)
    assert (meta["expired_deleted"], meta["soft_deleted_user_sessions_deleted"]) == (11, 3)
    assert meta["dry_run"] is True
    assert await session_ids(engine) == set().union(*ids.values())


def run_async(coro: Any) -> Any:
    """execute_in_process runs the async op on an event loop of its own, so the job tests are
    plain functions and do their database set-up and checks through asyncio.run."""
    return asyncio.run(coro)


async def _populate_at(url: str) -> dict[str, set[int]]:
    async with migrated_engine(url) as engine:
        return await populate(engine)


async def _session_ids_at(url: str) -> set[int]:
    async with migrated_engine(url) as engine:
        return await session_ids(engine)


def test_job_runs_in_process_and_materializes_user_sessions(database_url: str) -> None:
    ids = run_async(_populate_at(database_url))
    instance = DagsterInstance.get()
    result = task.job.execute_in_process(
        resources={"database": Database(url=database_url)},
        run_config={"ops": {"delete_expired_sessions": {"config": {"batch_size": 2}}}},
        instance=instance,
    )
    assert result.success
    assert result.dagster_run.tags[TAG_JOB] == "cleanup_expired_sessions"
    materializations = result.asset_materializations_for_node("delete_expired_sessions")
    assert [m.asset_key.to_user_string() for m in materializations] == ["user_sessions"]
    assert materializations[0].metadata["expired_deleted"].value == 11
    assert materializations[0].metadata["soft_deleted_user_sessions_deleted"].value == 3
    assert run_async(_session_ids_at(database_url)) == ids["alive_live"]
    # Progress is logged batch by batch: batch_size 2 makes 6 batches of the 11 expired sessions
    # and 2 of the soft-deleted user's 3 live ones.
    batches = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.user_message.startswith("Deleted a batch of sessions")
    ]
    assert len(batches) == 6 + 2


@job
def _tiny_job() -> None:
    @op
    def noop() -> None:
        return None

    noop()


def test_prunes_finished_runs_older_than_the_retention(
    database_url: str, dagster_home: Path
) -> None:
    run_async(_populate_at(database_url))
    instance = DagsterInstance.get()
    now = datetime.now(UTC)
    with freeze_time(now - timedelta(days=45)):
        old = [_tiny_job.execute_in_process(instance=instance).run_id for _ in range(3)]
    with freeze_time(now - timedelta(days=10)):
        recent = [_tiny_job.execute_in_process(instance=instance).run_id for _ in range(2)]
    assert instance.get_runs_count(RunsFilter(run_ids=old)) == 3

    result = task.job.execute_in_process(
        resources={"database": Database(url=database_url)},
        run_config={"ops": {"delete_expired_sessions": {"config": {"run_retention_days": 30}}}},
        instance=instance,
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("delete_expired_sessions")
    assert materialization.metadata["runs_pruned"].value == 3

    shards = dagster_home / "history" / "runs"
    assert not [run_id for run_id in old if (shards / f"{run_id}.db").exists()]
    assert all((shards / f"{run_id}.db").exists() for run_id in recent)
    # As another process (the UI) sees the instance now:
    fresh = DagsterInstance.get()
    assert {r.run_id for r in fresh.get_runs()} == {*recent, result.run_id}
    assert all(fresh.all_logs(run_id) == [] for run_id in old)
    assert all(fresh.all_logs(run_id) for run_id in recent)


async def test_200k_expired_among_50k_live_on_postgres(postgres_url: str) -> None:
    """All 200,000 expired sessions go, every one of the 50,000 live ones stays; prints the time."""
    expired, live = 200_000, 50_000
    async with migrated_engine(postgres_url):
        pass
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (email, name) "
            "SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, 1000) g"
        )
        conn.execute(
            "INSERT INTO user_sessions (user_id, token_hash, expires_at) "
            "SELECT 1 + g %% 1000, md5('e' || g) || md5('E' || g), "
            "       now() - interval '1 second' - (g %% 43200) * interval '1 minute' "
            "FROM generate_series(1, %s) g",
            (expired,),
        )
        conn.execute(
            "INSERT INTO user_sessions (user_id, token_hash, expires_at) "
            "SELECT 1 + g %% 1000, md5('l' || g) || md5('L' || g), "
            "       now() + interval '1 hour' + (g %% 43200) * interval '1 minute' "
            "FROM generate_series(1, %s) g",
            (live,),
        )
        conn.execute("ANALYZE user_sessions")
        live_ids = {
            row[0] for row in conn.execute("SELECT id FROM user_sessions WHERE expires_at > now()")
        }
    assert len(live_ids) == live

    with build_op_context(resources={"database": Database(url=postgres_url)}) as context:
        started = time.perf_counter()
        output = await delete_expired_sessions(context, CleanupConfig())
        elapsed = time.perf_counter() - started

    assert metadata_of(output)["expired_deleted"] == expired
    with psycopg.connect(postgres_url) as conn:
        after = {row[0] for row in conn.execute("SELECT id FROM user_sessions")}
    assert after == live_ids
    print(
        f"\ncleanup_expired_sessions on Postgres: {expired:,} expired deleted among {live:,} live "
        f"in {elapsed:.2f} s (batch_size {CleanupConfig().batch_size}, "
        f"{expired // CleanupConfig().batch_size} batches)"
    )
