"""replay_dead_letters: dead items back in their queue, their letters marked; on SQLite and Postgres.

An email's state is in two rows: the platform's ``email_queue`` row and the jobs' delivery; a
video's, in the platform's ``streamings`` row and the jobs' video check. The tests compare the two
merged (the email and video fixtures' read-backs), and the platform's status on its own.

The end-to-end tests run process_email_queue against the Resend emulator around the replay: a
replayed email whose last send did get through is answered from Resend's cache, not re-delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetMaterialization, Definitions, MetadataValue, build_op_context
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import DeadLetter, EmailDelivery
from alianza_jobs.db.platform_models import EmailQueue
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.dead_letters import replay_dead_letters
from alianza_jobs.defs.dead_letters.replay_dead_letters import ReplayConfig, requeue_dead_letters
from alianza_jobs.defs.emails import process_email_queue
from alianza_jobs.defs.emails.process_email_queue import EmailQueueConfig, send_due_emails
from alianza_jobs.emulators import ResendEmulator
from alianza_jobs.resources import Database
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.db.helpers import (
    DRIZZLE_SCHEMA_MAP,
    drizzle_migrated_engine,
    migrated_engine,
)
from alianza_jobs_tests.defs.emails import fixtures as email_fixtures
from alianza_jobs_tests.defs.emails.fixtures import (
    Row,
    add_emails,
    dead_letters,
    email,
    metadata_of,
    resources,
    rows_by_id,
    run_async,
)
from alianza_jobs_tests.defs.videos.fixtures import insert_streamings, streamings_by_id

# The shared fixtures, registered here under their names: engine, state_dir, emulator.
emulator_fixture = email_fixtures.emulator_fixture

OP = "requeue_dead_letters"
KEY = "k" * 64
HOUR = timedelta(hours=1)
VIDEO_STATE = ("status", "attempts", "error_reason", "checked_at", "locked_by", "locked_until")


async def add_letters(engine: AsyncEngine, letters: list[dict[str, Any]]) -> list[int]:
    rows = [
        {"payload": {}, "error": "boom", "failed_at": utcnow() - HOUR, "replayed_at": None, **d}
        for d in letters
    ]
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(DeadLetter).returning(DeadLetter.id, sort_by_parameter_order=True), rows
        )
        return list(result.scalars())


async def letters_by_id(engine: AsyncEngine) -> dict[int, datetime | None]:
    return {d.id: d.replayed_at for d in await dead_letters(engine)}


async def replay(
    url: str, *, schema_map: Path | None = None, **config: Any
) -> tuple[dict[str, Any], list[Any]]:
    database = Database(url=url, schema_map=None if schema_map is None else str(schema_map))
    with build_op_context(resources={"database": database}) as context:
        output = await requeue_dead_letters(context, ReplayConfig(**config))
        return metadata_of(output), context.get_events()


def video_state(row: Any) -> tuple[Any, ...]:
    return tuple(row[k] for k in VIDEO_STATE)


async def emails_scenario(engine: AsyncEngine) -> dict[str, Any]:
    """Dead emails with letters, and letters that must not lead to a requeue."""
    past = utcnow() - HOUR
    now = utcnow()
    ids = await add_emails(
        engine,
        [
            email(
                1,
                status="dead",
                attempts=5,
                idempotency_key=KEY,
                next_attempt_at=past,
                # A lease left behind (a crash after the row died): the replay clears it.
                locked_by="crashed-run",
                locked_until=now + HOUR,
            ),
            email(2, status="dead", last_error="invalid: subject: contains a line break"),
            email(3, status="sent", provider_message_id="re_1", sent_at=past),
            email(4, status="dead", attempts=2),
            email(5, status="pending"),
        ],
    )
    r1, r2, r3, r4, _ = ids
    [streaming_id] = await insert_streamings(
        engine, [{"external_id": "a" * 32, "status": "error", "error_reason": "x"}]
    )
    letter_ids = await add_letters(
        engine,
        [
            {"source": "email_queue", "source_id": r1},
            {"source": "email_queue", "source_id": r2},
            {"source": "email_queue", "source_id": r3},  # its row was sent since
            {"source": "email_queue", "source_id": "999999"},  # its row is gone
            {"source": "email_queue", "source_id": r1, "replayed_at": past},  # an older death
            {"source": "email_queue", "source_id": r4},
            {"source": "email_queue", "source_id": r4},  # two letters, one row
            {"source": "streamings", "source_id": str(streaming_id)},
        ],
    )
    names = ["L1", "L2", "L3_sent", "L4_missing", "L5_replayed", "L6a", "L6b", "L7_streaming"]
    return {
        **dict(zip(names, letter_ids, strict=True)),
        "r1": r1,
        "r2": r2,
        "r3": r3,
        "r4": r4,
        "streaming": streaming_id,
    }


async def test_replays_every_unreplayed_dead_email_and_marks_its_letters(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await emails_scenario(engine)
    before = await rows_by_id(engine)
    videos_before = await streamings_by_id(engine)
    letters_before = await letters_by_id(engine)
    started = utcnow()

    meta, events = await replay(database_url, source="email_queue")

    assert meta["dead_letters_replayed"] == 4  # L1, L2, L6a, L6b
    assert meta["items_requeued"] == 3  # r1, r2, r4
    assert (meta["skipped_not_dead"], meta["skipped_missing"]) == (1, 1)
    assert meta["dry_run"] is False
    rows = await rows_by_id(engine)
    for name in ("r1", "r2", "r4"):
        row = rows[ids[name]]
        assert (row.status, row.attempts, row.locked_by, row.locked_until) == (
            "pending",
            0,
            None,
            None,
        )
        assert row.platform_status == "pending"
        assert row.next_attempt_at is not None
        assert started <= row.next_attempt_at <= utcnow()
    assert rows[ids["r1"]].idempotency_key == KEY  # kept: see the module doc
    assert rows[ids["r2"]].idempotency_key is None
    # Why it died stays readable after the replay (docs/dead_letters.md).
    assert rows[ids["r2"]].last_error == before[ids["r2"]].last_error
    assert rows[ids["r3"]] == before[ids["r3"]]  # sent: untouched
    letters = await letters_by_id(engine)
    for name in ("L1", "L2", "L6a", "L6b"):
        assert letters[ids[name]] is not None and letters[ids[name]] >= started  # type: ignore[operator]
    for name in ("L3_sent", "L4_missing", "L7_streaming"):
        assert letters[ids[name]] is None
    assert letters[ids["L5_replayed"]] == letters_before[ids["L5_replayed"]]
    [materialization] = events
    assert isinstance(materialization, AssetMaterialization)
    assert materialization.asset_key.to_user_string() == "email_queue"
    # The other queue was not touched: neither the platform's row nor its check.
    assert await streamings_by_id(engine) == videos_before
    assert videos_before[ids["streaming"]]["status"] == "error"


async def test_dry_run_changes_nothing_and_reports_the_same(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await emails_scenario(engine)
    rows_before, letters_before = await rows_by_id(engine), await letters_by_id(engine)

    meta, events = await replay(database_url, source="email_queue", dry_run=True)

    assert (meta["dead_letters_replayed"], meta["items_requeued"]) == (4, 3)
    assert (meta["skipped_not_dead"], meta["skipped_missing"]) == (1, 1)
    assert meta["dry_run"] is True
    assert meta["item_ids"] == ",".join(sorted(ids[n] for n in ("r1", "r2", "r4")))
    assert await rows_by_id(engine) == rows_before
    assert await letters_by_id(engine) == letters_before
    assert events == []  # nothing changed, nothing materialized


async def test_only_the_requested_letters_and_why_others_were_not_replayed(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await emails_scenario(engine)
    wanted = [ids["L2"], ids["L7_streaming"], ids["L5_replayed"], 424_242]

    meta, _ = await replay(database_url, source="email_queue", ids=wanted)

    assert (meta["dead_letters_replayed"], meta["items_requeued"]) == (1, 1)
    assert meta["skipped_other_source"] == 1
    assert meta["skipped_already_replayed"] == 1
    assert meta["skipped_not_found"] == 1
    assert meta["skipped_not_found_ids"] == "424242"
    rows = await rows_by_id(engine)
    assert (rows[ids["r2"]].status, rows[ids["r2"]].platform_status) == ("pending", "pending")
    for name in ("r1", "r4"):
        assert (rows[ids[name]].status, rows[ids[name]].platform_status) == ("dead", "dead")


async def test_replays_errored_videos_back_to_queued(
    engine: AsyncEngine, database_url: str
) -> None:
    now = utcnow()
    errored, deleted, ready, unchecked = await insert_streamings(
        engine,
        [
            {
                "external_id": "a" * 32,
                "status": "error",
                "error_reason": "ERR_NON_VIDEO",
                "checked_at": now,
                "attempts": 5,
                # A lease left behind (a crash after the row died): the replay clears it.
                "locked_by": "crashed-run",
                "locked_until": now + HOUR,
                "duration": None,
                "deleted_at": None,
            },
            {
                "external_id": "b" * 32,
                "status": "error",
                "error_reason": "x",
                "checked_at": now,
                "attempts": 1,
                "locked_by": None,
                "locked_until": None,
                "duration": None,
                "deleted_at": now,
            },
            {
                "external_id": "c" * 32,
                "status": "ready",
                "error_reason": None,
                "checked_at": now,
                "attempts": 0,
                "locked_by": None,
                "locked_until": None,
                "duration": 12.5,
                "deleted_at": None,
            },
            {
                # Errored on the platform without a check of ours (e.g. set so by the platform).
                "external_id": "d" * 32,
                "status": "error",
                "error_reason": None,
                "checked_at": None,
                "attempts": 0,
                "locked_by": None,
                "locked_until": None,
                "duration": None,
                "deleted_at": None,
            },
        ],
    )
    before = await streamings_by_id(engine)
    letters = await add_letters(
        engine,
        [
            {"source": "streamings", "source_id": str(i)}
            for i in (errored, deleted, ready, unchecked)
        ],
    )

    meta, events = await replay(database_url, source="streamings")

    assert (meta["dead_letters_replayed"], meta["items_requeued"], meta["skipped_not_dead"]) == (
        2,
        2,
        2,
    )
    rows = await streamings_by_id(engine)
    for row_id in (errored, unchecked):
        assert video_state(rows[row_id]) == ("queued", 0, None, None, None, None)
    assert rows[deleted] == before[deleted]  # soft-deleted: not put back
    assert rows[deleted]["status"] == "error"
    assert rows[ready] == before[ready]
    replayed = await letters_by_id(engine)
    assert [replayed[i] is not None for i in letters] == [True, False, False, True]
    [materialization] = events
    assert materialization.asset_key.to_user_string() == "streamings"


@pytest.mark.parametrize("moved_by", ["the_jobs", "the_platform"])
async def test_a_row_requeued_meanwhile_is_not_reset(
    engine: AsyncEngine, database_url: str, moved_by: str
) -> None:
    """The UPDATE re-checks the status: only still-dead rows are reset. Sent since by the email
    task (delivery and platform row), or marked sent by the platform alone (its row only)."""
    [row_id] = await add_emails(engine, [email(1, status="dead", attempts=3)])
    await add_letters(engine, [{"source": "email_queue", "source_id": row_id}])
    before = (await rows_by_id(engine))[row_id]
    async with engine.begin() as conn:
        await conn.execute(
            update(EmailQueue).where(EmailQueue.id == int(row_id)).values(status="sent")
        )
        if moved_by == "the_jobs":
            await conn.execute(
                update(EmailDelivery)
                .where(EmailDelivery.email_id == row_id)
                .values(status="sent", provider_message_id="re_1", sent_at=utcnow())
            )
    moved = (await rows_by_id(engine))[row_id]

    meta, _ = await replay(database_url, source="email_queue")

    assert (meta["items_requeued"], meta["skipped_not_dead"]) == (0, 1)
    row = (await rows_by_id(engine))[row_id]
    assert row == moved
    assert row.platform_status == "sent"
    assert (row.status, row.attempts) == (
        ("sent", 3) if moved_by == "the_jobs" else (before.status, before.attempts)
    )
    assert [d.replayed_at for d in await dead_letters(engine)] == [None]


@pytest.mark.parametrize("by_id", [False, True])
async def test_letters_go_a_page_at_a_time(
    engine: AsyncEngine, database_url: str, monkeypatch: pytest.MonkeyPatch, by_id: bool
) -> None:
    monkeypatch.setattr(replay_dead_letters, "PAGE", 3)
    # `attempts` gives each row its delivery: dead is our state, a platform row alone is not.
    ids = await add_emails(engine, [email(i, status="dead", attempts=5) for i in range(8)])
    letters = await add_letters(engine, [{"source": "email_queue", "source_id": i} for i in ids])
    wanted = letters[1:] if by_id else []
    meta, _ = await replay(database_url, source="email_queue", ids=wanted)
    assert (meta["dead_letters_replayed"], meta["items_requeued"]) == (8 - by_id, 8 - by_id)
    rows = await rows_by_id(engine)
    expected = ["dead" if by_id else "pending"] + ["pending"] * 7
    assert [rows[i].status for i in ids] == expected
    assert [rows[i].platform_status for i in ids] == expected


def test_task_is_declared_manual_only_with_its_limits() -> None:
    spec = replay_dead_letters.TASK
    assert (spec.name, spec.cron, spec.retry) == ("replay_dead_letters", None, None)
    assert spec.timeout == timedelta(minutes=5)
    with pytest.raises(ValueError, match="manual-only"):
        spec.schedule(replay_dead_letters.job, load_settings())
    assert [node.name for node in replay_dead_letters.job.nodes] == [OP]
    defs = Definitions(
        jobs=[replay_dead_letters.job], resources={"database": Database(url="sqlite://")}
    )
    assert defs.get_job_def("replay_dead_letters").tags["dagster/max_runtime"] == str(5 * 60 + 60)


# -- with process_email_queue and the emulator ---------------------------------------------------------


async def send(
    url: str, state_dir: Path, *, schema_map: Path | None = None, **config: Any
) -> dict[str, Any]:
    res = resources(url, state_dir, max_attempts=1)
    if schema_map is not None:
        res["database"] = Database(url=url, schema_map=str(schema_map))
    with build_op_context(resources=res) as context:
        return metadata_of(await send_due_emails(context, EmailQueueConfig(**config)))


async def test_partial_replay_of_a_delivered_group_is_refused_not_duplicated(
    engine: AsyncEngine,
    database_url: str,
    state_dir: Path,
    emulator: ResendEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group died of 500s that came *after* Resend sent it. Replaying one row of it alone is a
    different request under the same key: Resend refuses it (409), which proves the earlier send
    arrived, so the row is dead-lettered again saying so, without its key. Only a second,
    deliberate replay sends it again."""
    ids = await add_emails(engine, [email(i) for i in range(3)])
    emulator.configure(error_rate=1.0, error_statuses=[500], fault_after_processing_share=1.0)
    meta = await send(database_url, state_dir, max_attempts=1)
    assert meta["dead_exhausted"] == 3
    assert emulator.count() == 3  # delivered, though the rows could not know
    emulator.configure(error_rate=0.0)
    [first, *_] = [d.id for d in await dead_letters(engine)]

    await replay(database_url, source="email_queue", ids=[first])
    meta = await send(database_url, state_dir)
    assert (meta["dead_conflict"], meta["sent"]) == (1, 0)
    row = (await rows_by_id(engine))[ids[0]]
    assert (row.status, row.platform_status, row.idempotency_key) == ("dead", "dead", None)
    assert "idempotency conflict" in (row.last_error or "")
    assert emulator.count() == 3  # no duplicate

    # The deliberate second replay, of every letter: row 1 has no key any more and goes out
    # afresh (the operator was told it probably arrived). Rows 2 and 3 still hold the key of the
    # batch of three; sent as a batch of two under it, they are refused for the same reason.
    await replay(database_url, source="email_queue")
    meta = await send(database_url, state_dir)
    assert (meta["sent"], meta["dead_conflict"]) == (1, 2)
    rows = await rows_by_id(engine)
    assert (rows[ids[0]].status, rows[ids[0]].platform_status) == ("sent", "sent")
    assert {
        (rows[i].status, rows[i].platform_status, rows[i].idempotency_key) for i in ids[1:]
    } == {("dead", "dead", None)}
    assert emulator.count() == 4


def test_job_replay_after_exhausted_attempts_is_answered_from_resends_cache(
    database_url: str, state_dir: Path
) -> None:
    """Emails die after their sends' outcomes stayed unknown (the 500s came after delivery); the
    operator replays them all; the same group goes out under the same key and Resend answers
    from its cache: every row ends sent with the id of the one delivery, and nothing twice."""
    emulator = ResendEmulator(state_dir)
    emulator.configure(error_rate=1.0, error_statuses=[500], fault_after_processing_share=1.0)

    async def seed() -> list[str]:
        async with migrated_engine(database_url) as engine:
            return await add_emails(engine, [email(i) for i in range(5)])

    async def read() -> tuple[dict[str, Row], list[Any]]:
        async with migrated_engine(database_url) as engine:
            return await rows_by_id(engine), await dead_letters(engine)

    ids = run_async(seed())
    res = resources(database_url, state_dir, max_attempts=1)
    send_config = {"ops": {"send_due_emails": {"config": {"max_attempts": 2, "backoff_base_s": 0}}}}
    assert process_email_queue.job.execute_in_process(resources=res, run_config=send_config).success
    rows, letters = run_async(read())
    [key] = {r.idempotency_key for r in rows.values()}
    assert key is not None
    assert {(r.status, r.platform_status) for r in rows.values()} == {("dead", "dead")}
    assert len(letters) == 5
    assert emulator.counts_by_idempotency_key() == {key: 5}

    dry = replay_dead_letters.job.execute_in_process(
        resources={"database": Database(url=database_url)},
        run_config={"ops": {OP: {"config": {"source": "email_queue", "dry_run": True}}}},
    )
    assert dry.success
    assert dry.asset_materializations_for_node(OP) == []
    assert {r.status for r in run_async(read())[0].values()} == {"dead"}

    result = replay_dead_letters.job.execute_in_process(
        resources={"database": Database(url=database_url)},
        run_config={"ops": {OP: {"config": {"source": "email_queue"}}}},
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node(OP)
    assert materialization.asset_key.to_user_string() == "email_queue"
    assert materialization.metadata["items_requeued"] == MetadataValue.int(5)
    rows, letters = run_async(read())
    assert {
        (r.status, r.platform_status, r.attempts, r.idempotency_key) for r in rows.values()
    } == {("pending", "pending", 0, key)}
    assert all(d.replayed_at is not None for d in letters)

    emulator.configure(error_rate=0.0)
    assert process_email_queue.job.execute_in_process(resources=res).success
    rows, _ = run_async(read())
    inbox = {e.id: e for e in emulator.inbox()}
    assert len(inbox) == 5
    for row_id in ids:
        assert (rows[row_id].status, rows[row_id].platform_status) == ("sent", "sent")
        assert rows[row_id].provider_message_id in inbox
    assert emulator.counts_by_idempotency_key() == {key: 5}
    assert emulator.idempotency(key)[0]["replays"] >= 1


# -- on the platform's own schema, as Drizzle made it ------------------------------------------------
# Postgres only: uuid ids, an enum status without `dead` (the map's `failed`), a `to` column. The
# platform's rows are written and read in SQL of its own names: what the platform sees.

READ_DRIZZLE_EMAIL = text(
    'SELECT "to", status::text AS status, sent_at FROM email_queue WHERE id = CAST(:id AS uuid)'
)


@pytest.fixture
async def drizzle_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """A Postgres database with the Drizzle platform tables and the jobs' tables at head."""
    async with drizzle_migrated_engine(postgres_url) as engine:
        yield engine


async def drizzle_email(engine: AsyncEngine, email_id: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(READ_DRIZZLE_EMAIL, {"id": email_id})).one()


async def delivery_of(engine: AsyncEngine, email_id: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                EmailDelivery.__table__.select().where(EmailDelivery.email_id == email_id)
            )
        ).one()


async def test_a_dead_drizzle_email_fixed_and_replayed_is_sent_once(
    drizzle_engine: AsyncEngine, postgres_url: str, state_dir: Path, emulator: ResendEmulator
) -> None:
    """Dead of an invalid address (`failed` to the platform), the address fixed on the platform's
    row, replayed: pending again on both sides, then sent once with the fixed address."""
    async with drizzle_engine.begin() as conn:
        bad = str(
            await conn.scalar(
                text(
                    'INSERT INTO email_queue ("to", subject, text) '
                    "VALUES ('not-an-address', 'Order 1 confirmed', 'Order 1') RETURNING id::text"
                )
            )
        )
    meta = await send(postgres_url, state_dir, schema_map=DRIZZLE_SCHEMA_MAP)
    assert (meta["dead"], meta["dead_invalid"], meta["sent"]) == (1, 1, 0)
    assert (await drizzle_email(drizzle_engine, bad)).status == "failed"
    assert (await delivery_of(drizzle_engine, bad)).status == "dead"
    [letter] = await dead_letters(drizzle_engine)
    assert (letter.source, letter.source_id, letter.replayed_at) == ("email_queue", bad, None)

    fixed = "user1@example.com"
    async with drizzle_engine.begin() as conn:
        await conn.execute(
            text('UPDATE email_queue SET "to" = :to WHERE id = CAST(:id AS uuid)'),
            {"to": fixed, "id": bad},
        )
    # A letter of an integer id (from before the move to uuid keys) in the same page: no row.
    [stale] = await add_letters(drizzle_engine, [{"source": "email_queue", "source_id": "999999"}])
    started = utcnow()
    meta, events = await replay(postgres_url, schema_map=DRIZZLE_SCHEMA_MAP, source="email_queue")

    assert (meta["dead_letters_replayed"], meta["items_requeued"]) == (1, 1)
    assert meta["item_ids"] == bad
    assert (meta["skipped_missing"], meta["skipped_missing_ids"]) == (1, str(stale))
    assert len(events) == 1
    assert (await drizzle_email(drizzle_engine, bad)).status == "pending"  # the map's pending
    delivery = await delivery_of(drizzle_engine, bad)
    assert (delivery.status, delivery.attempts, delivery.locked_by) == ("pending", 0, None)
    assert started <= delivery.next_attempt_at <= utcnow()
    assert [d.replayed_at is not None for d in await dead_letters(drizzle_engine)] == [True, False]

    meta = await send(postgres_url, state_dir, schema_map=DRIZZLE_SCHEMA_MAP)
    assert (meta["sent"], meta["dead"]) == (1, 0)
    platform = await drizzle_email(drizzle_engine, bad)
    assert (platform.to, platform.status) == (fixed, "sent")
    assert platform.sent_at is not None
    delivery = await delivery_of(drizzle_engine, bad)
    [delivered] = emulator.inbox()
    assert delivered.to == [fixed]
    assert (delivery.status, delivery.provider_message_id) == ("sent", delivered.id)
    assert emulator.inbox(to="not-an-address") == []

    # Sent is final: neither another run nor another replay sends it again.
    meta = await send(postgres_url, state_dir, schema_map=DRIZZLE_SCHEMA_MAP)
    assert (meta["processed"], meta["api_calls"]) == (0, 0)
    meta, _ = await replay(postgres_url, schema_map=DRIZZLE_SCHEMA_MAP, source="email_queue")
    assert meta["items_requeued"] == 0
    assert len(emulator.inbox()) == 1
