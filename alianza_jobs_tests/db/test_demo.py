"""Demo data: realistic, sized by the caller, deterministic, and what DemoData says it is."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.cli import cli
from alianza_jobs.db.demo import seed_demo
from alianza_jobs.db.models import EmailDelivery, VideoCheck
from alianza_jobs.db.platform_models import EmailQueue, Streaming, User, UserSession
from alianza_jobs.db.platform_tables import platform_tables
from alianza_jobs.db.schema_map import default_map
from alianza_jobs.defs.emails.queue_sql import claim_fresh
from alianza_jobs.defs.videos.queue_sql import lease_due_rows
from alianza_jobs_tests.db.helpers import count, migrated_engine

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


async def test_seed_demo_writes_what_it_reports(engine: AsyncEngine) -> None:
    data = await seed_demo(
        engine, users=40, sessions=300, expired_ratio=0.25, videos=12, emails=15, seed=7, now=NOW
    )
    assert await count(engine, User) == 40
    assert await count(engine, User, User.deleted_at.is_not(None)) == data.soft_deleted_users > 0
    assert await count(engine, UserSession) == 300
    assert await count(engine, UserSession, UserSession.expires_at <= NOW) == 75
    assert data.expired_sessions == 75
    assert await count(engine, EmailQueue, EmailQueue.status == "pending") == 15
    assert await count(engine, EmailQueue, EmailQueue.created_at <= NOW) == 15
    # Only the platform's tables are seeded, as its own app would have written them: with no
    # bookkeeping row an email is due now and a video never checked.
    assert await count(engine, EmailDelivery) == 0
    assert await count(engine, VideoCheck) == 0

    async with engine.connect() as conn:
        videos = (await conn.execute(select(Streaming).order_by(Streaming.created_at))).all()
        emails = (await conn.execute(select(EmailQueue))).all()
    assert {(v.external_id, v.created_at) for v in videos} == {
        (v.external_id, v.created_at) for v in data.videos
    }
    assert all(re.fullmatch(r"[0-9a-f]{32}", v.external_id) for v in videos)
    assert {(v.provider, v.status) for v in videos} == {("cloudflare", "queued")}
    assert all(e.subject and e.html and e.text and "@" in e.to_address for e in emails)

    # What the queues find due in it: every seeded video and email.
    tables = await platform_tables(engine, default_map())
    lease = timedelta(minutes=5)
    assert await lease_due_rows(engine, tables, owner="demo", lease=lease, now=NOW) == 12
    claimed = await claim_fresh(engine, tables, owner="demo", lease=lease, limit=100, now=NOW)
    assert len(claimed) == 15


async def test_same_seed_same_data(database_url: str, request: pytest.FixtureRequest) -> None:
    async def seeded_emails(url: str) -> list[str]:
        async with migrated_engine(url) as engine:
            await seed_demo(engine, users=10, sessions=5, videos=3, emails=2, seed=3, now=NOW)
            async with engine.connect() as conn:
                return list((await conn.scalars(select(User.email).order_by(User.id))).all())

    if database_url.startswith("sqlite"):
        second_url = database_url.replace("app.db", "app2.db")
    else:
        second_url = request.getfixturevalue("make_postgres_database")()
    assert await seeded_emails(database_url) == await seeded_emails(second_url)


async def test_seeding_twice_adds_instead_of_colliding(engine: AsyncEngine) -> None:
    first = await seed_demo(engine, users=20, sessions=30, videos=4, emails=5, seed=1)
    second = await seed_demo(engine, users=20, sessions=30, videos=4, emails=5, seed=1)
    assert await count(engine, User) == 40
    assert await count(engine, UserSession) == 60
    assert {v.external_id for v in first.videos}.isdisjoint(v.external_id for v in second.videos)


async def test_bad_sizes_are_refused(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="need at least one user"):
        await seed_demo(engine, users=0, sessions=5)
    with pytest.raises(ValueError, match="expired_ratio"):
        await seed_demo(engine, expired_ratio=1.5)


def test_cli_seed_demo_and_if_empty(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    refused = runner.invoke(cli, ["db", "seed-demo"])
    assert refused.exit_code == 1
    assert "db upgrade" in refused.output

    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    args = ["db", "seed-demo", "--users", "12", "--sessions", "30", "--videos", "5"]
    seeded = runner.invoke(cli, [*args, "--emails", "4", "--if-empty"])
    assert seeded.exit_code == 0, seeded.output
    assert "seeded 12 users" in seeded.output
    assert "5 queued videos, 4 pending emails" in seeded.output

    again = runner.invoke(cli, [*args, "--if-empty"])
    assert again.exit_code == 0, again.output
    assert "not seeding" in again.output

    more = runner.invoke(cli, args)
    assert more.exit_code == 0, more.output
    assert "seeded 12 users" in more.output
