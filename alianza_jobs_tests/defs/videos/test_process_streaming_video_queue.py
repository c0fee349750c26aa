"""process_streaming_video_queue: queued uploads settle from bulk listings, not one GET per row.

Layers: the pure rules (verdicts, planned writes), the op called directly (build_op_context) against
the in-process Stream emulator or a respx-mocked API, and the job run with execute_in_process, on
SQLite and on the real Postgres. The 10,000-row test prints the API-call figures.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import dagster as dg
import httpx
import pytest
import respx
from sqlalchemy import String, func, insert, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.stream import parse_video
from alianza_jobs.db.models import CircuitBreaker, DeadLetter, VideoCheck
from alianza_jobs.db.platform_models import Streaming
from alianza_jobs.defs.videos import process_streaming_video_queue as task
from alianza_jobs.defs.videos.process_streaming_video_queue import (
    NO_EXTERNAL_ID,
    NOT_FOUND_REASON,
    VideoQueueConfig,
    check_queued_videos,
)
from alianza_jobs.defs.videos.reconcile import LeasedRow, Verdict, plan_write, verdict_for
from alianza_jobs.emulators import VideoSpec
from alianza_jobs.platform.tags import TAG_JOB
from alianza_jobs.resources import CloudflareStream, Database
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.db.helpers import migrated_engine, poll
from alianza_jobs_tests.defs.videos.fixtures import (
    emulator,
    insert_streamings,
    metadata_of,
    run_async,
    stream_resource,
    streamings_by_id,
    uid_for,
)

HOUR = timedelta(hours=1)
OP = "check_queued_videos"


# -- the rules, without I/O -------------------------------------------------------------------------


def _video(**fields: Any) -> Any:
    base: dict[str, Any] = {
        "uid": uid_for("v"),
        "status": {"state": "ready"},
        "duration": 12.5,
        "created": "2026-03-01T12:00:00Z",
    }
    return parse_video({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, Verdict("ready", duration=12.5)),
        ({"duration": -1}, Verdict("ready", duration=None)),
        ({"duration": "12.5"}, Verdict("ready", duration=None)),
        ({"duration": None}, Verdict("ready", duration=None)),
        ({"status": {"state": "inprogress", "pctComplete": "40"}}, Verdict("processing")),
        ({"status": {"state": "pendingupload"}}, Verdict("processing")),
        ({"status": {"state": "downloading"}}, Verdict("processing")),
        ({"status": {"state": "queued"}}, Verdict("processing")),
        ({"status": {"state": "archived-somewhere"}}, Verdict("processing")),
        (
            {
                "status": {
                    "state": "error",
                    "errorReasonCode": "ERR_NON_VIDEO",
                    "errorReasonText": "Not a video.",
                }
            },
            Verdict("error", reason="ERR_NON_VIDEO: Not a video."),
        ),
        (
            {"status": {"state": "error", "errReasonCode": "ERR_UNKNOWN", "errReasonText": ""}},
            Verdict("error", reason="ERR_UNKNOWN"),
        ),
        (
            {"status": {"state": "error"}},
            Verdict("error", reason="Stream reported an error without a reason"),
        ),
    ],
)
def test_verdict_for_each_kind_of_video(fields: dict[str, Any], expected: Verdict) -> None:
    assert verdict_for(_video(**fields)) == expected


def test_a_video_without_a_state_fails_its_rows() -> None:
    verdict = verdict_for(_video(status=None))
    assert verdict.outcome == "failed"
    assert verdict.reason is not None and "missing status" in verdict.reason


def test_plan_write_counts_attempts_and_dead_letters_at_the_maximum() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        LeasedRow(1, "a", 0),
        LeasedRow(2, "a", 4),  # shares the uid; one more failure reaches max_attempts=5
        LeasedRow(3, "b", 0),
    ]
    plan = plan_write(
        rows,
        {"a": Verdict("failed", reason="malformed video: no state"), "b": Verdict("ready", 3.0)},
        now=now,
        max_attempts=5,
    )
    by_id = {c["id"]: c for c in plan.changes}
    assert by_id[1] == {"id": 1, "checked_at": now, "attempts": 1}
    assert by_id[2]["status"] == "error" and by_id[2]["attempts"] == 5
    assert "gave up after 5 failed attempts: malformed video" in by_id[2]["error_reason"]
    assert by_id[3] == {
        "id": 3,
        "checked_at": now,
        "status": "ready",
        "duration": 3.0,
        "error_reason": None,
    }
    assert plan.labels == {1: "failed", 2: "dead_lettered", 3: "ready"}
    [letter] = plan.dead_letters
    assert (letter["source"], letter["source_id"]) == ("streamings", 2)
    assert letter["payload"]["external_id"] == "a"


# -- a mixed queue against the emulator ------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    status: str
    duration: float | None = None
    reason: str | None = None  # a substring of error_reason
    checked: bool = True
    attempts: int = 0


@dataclass
class Scenario:
    expected: dict[int, Expect]
    untouched: dict[int, Mapping[str, Any]]
    leased: int


async def build_mixed_queue(state_dir: Path, engine: AsyncEngine) -> Scenario:
    """Every kind of row the task meets, with the state each must end in."""
    stream = emulator(state_dir)
    now = stream.now()
    window = now - 2 * HOUR
    specs: list[VideoSpec] = []
    plan: list[tuple[dict[str, Any], Expect]] = []

    def video(label: str, created: datetime, **spec: Any) -> str:
        uid = uid_for(label)
        specs.append(VideoSpec(uid=uid, created=created, **spec))
        return uid

    def row(uid: str | None, created: datetime, expect: Expect) -> None:
        plan.append(({"external_id": uid, "provider": "cloudflare", "created_at": created}, expect))

    done: dict[str, Any] = {"started": now - 2 * HOUR, "final_after_s": 60.0}
    for i in range(6):
        created = window + timedelta(seconds=10 * i)
        uid = video(f"ready-{i}", created, outcome="ready", duration=10.0 + i, **done)
        row(uid, created + timedelta(seconds=1), Expect("ready", duration=10.0 + i))
        if i == 0:  # a second row for the same video: both settle from it
            row(uid, created + timedelta(seconds=2), Expect("ready", duration=10.0))
    for i in range(3):
        created = window + timedelta(minutes=5, seconds=i)
        uid = video(
            f"error-{i}",
            created,
            outcome="error",
            error_reason_code="ERR_NON_VIDEO",
            legacy_error_spelling=i == 0,
            **done,
        )
        row(uid, created + timedelta(seconds=1), Expect("error", reason="ERR_NON_VIDEO: "))
    for i in range(3):
        created = now - timedelta(minutes=20 - i)
        uid = video(
            f"processing-{i}",
            created,
            started=now - timedelta(minutes=1),
            initial_state="pendingupload" if i == 0 else None,
            queued_after_s=600.0 if i == 0 else None,
            final_after_s=36_000.0,
        )
        row(uid, created + timedelta(seconds=1), Expect("queued"))
    deleted = []
    for i in range(3):
        created = window + timedelta(minutes=30, seconds=i)
        uid = video(f"deleted-{i}", created, **done)
        deleted.append(uid)
        row(uid, created + timedelta(seconds=1), Expect("error", reason=NOT_FOUND_REASON))
    for i in range(2):  # old videos queued again recently: outside the listing window
        uid = video(f"old-{i}", now - timedelta(days=30, seconds=i), duration=99.0, **done)
        row(uid, now - timedelta(minutes=30), Expect("ready", duration=99.0))
    for i in range(5):  # other videos of the account, in the window, not in our queue
        video(f"noise-{i}", window + timedelta(minutes=40, seconds=i), **done)
    row(None, window, Expect("error", reason=NO_EXTERNAL_ID))
    row("  ", window, Expect("error", reason=NO_EXTERNAL_ID))
    row("not-a-stream-uid", window, Expect("error", reason=NOT_FOUND_REASON))

    stream.add_videos(specs)
    for uid in deleted:
        assert stream.delete(uid)

    ids = await insert_streamings(engine, [values for values, _ in plan])
    expected = {row_id: expect for row_id, (_, expect) in zip(ids, plan, strict=True)}

    # Rows the task must leave exactly as they are.
    other_uid = video("untouched", window, **done)
    stream.add_videos(specs[-1:])
    untouched_rows: list[dict[str, Any]] = [
        {"external_id": other_uid, "status": "ready", "duration": 1.0},
        {"external_id": other_uid, "provider": "mux"},
        {"external_id": other_uid, "deleted_at": now},
        {"external_id": other_uid, "locked_by": "another-run", "locked_until": now + HOUR},
    ]
    untouched_ids = await insert_streamings(
        engine, [{"provider": "cloudflare", "created_at": window, **r} for r in untouched_rows]
    )
    before = await streamings_by_id(engine)
    return Scenario(expected, {i: before[i] for i in untouched_ids}, len(expected))


async def assert_settled(engine: AsyncEngine, scenario: Scenario) -> None:
    rows = await streamings_by_id(engine)
    for row_id, expect in scenario.expected.items():
        row = rows[row_id]
        what = f"row {row_id} ({row['external_id']!r}): {row}"
        assert row["status"] == expect.status, what
        assert row["locked_by"] is None and row["locked_until"] is None, what
        assert (row["checked_at"] is not None) == expect.checked, what
        assert row["attempts"] == expect.attempts, what
        if expect.status == "ready":
            assert row["duration"] == expect.duration, what
            assert row["error_reason"] is None, what
        if expect.reason is not None:
            assert row["error_reason"] is not None and expect.reason in row["error_reason"], what
        if expect.status == "queued":
            assert row["error_reason"] is None and row["duration"] is None, what
    for row_id, before in scenario.untouched.items():
        assert rows[row_id] == before, f"row {row_id} changed"


async def test_op_settles_every_kind_of_row(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    scenario = await build_mixed_queue(state_dir, engine)
    resources = {"database": Database(url=database_url), "stream": stream_resource(state_dir)}
    with dg.build_op_context(resources=resources) as context:
        output = await check_queued_videos(context, VideoQueueConfig())
    await assert_settled(engine, scenario)

    meta = metadata_of(output)
    assert meta["processed"] == scenario.leased == 21
    assert (meta["ready"], meta["still_processing"]) == (6 + 1 + 2, 3)
    # error: 3 errored, 3 deleted and the unknown uid (not found), 2 without an external id
    assert (meta["errored"], meta["not_found"], meta["no_external_id"]) == (3 + 4 + 2, 4, 2)
    assert (meta["failed"], meta["deferred"], meta["lease_lost"]) == (0, 0, 0)
    assert meta["succeeded"] == meta["processed"]
    # One listing page, one id lookup for the 5 unseen valid uids, one GET for the odd uid.
    assert (meta["listing_calls"], meta["lookup_calls"], meta["get_calls"]) == (1, 1, 1)
    assert meta["api_calls"] == 3 == emulator(state_dir).calls(service="stream")
    assert meta["breaker"]["state"] == "closed"


async def test_a_second_run_finds_only_what_is_still_processing(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    await build_mixed_queue(state_dir, engine)
    resources = {"database": Database(url=database_url), "stream": stream_resource(state_dir)}
    with dg.build_op_context(resources=resources) as context:
        await check_queued_videos(context, VideoQueueConfig())
    emulator(state_dir).advance_clock(40_000)  # the processing videos finish
    with dg.build_op_context(resources=resources) as context:
        meta = metadata_of(await check_queued_videos(context, VideoQueueConfig()))
    assert meta["processed"] == 3
    assert meta["ready"] + meta["errored"] == 3
    async with engine.connect() as conn:
        queued = await conn.scalar(
            select(func.count())
            .select_from(Streaming)
            .outerjoin(VideoCheck, VideoCheck.streaming_id == sql_cast(Streaming.id, String))
            .where(
                Streaming.status == "queued",
                Streaming.provider == "cloudflare",
                Streaming.deleted_at.is_(None),
                VideoCheck.locked_by.is_(None),
            )
        )
    assert queued == 0


async def test_dry_run_asks_stream_and_changes_nothing(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    await build_mixed_queue(state_dir, engine)
    before = await streamings_by_id(engine)
    resources = {"database": Database(url=database_url), "stream": stream_resource(state_dir)}
    with dg.build_op_context(resources=resources) as context:
        meta = metadata_of(await check_queued_videos(context, VideoQueueConfig(dry_run=True)))
    assert (meta["ready"], meta["not_found"], meta["dry_run"]) == (9, 4, True)
    after = await streamings_by_id(engine)
    strip = ("updated_at",)  # the lease comes and goes; nothing else may change
    assert {k: {c: v for c, v in r.items() if c not in strip} for k, r in after.items()} == {
        k: {c: v for c, v in r.items() if c not in strip} for k, r in before.items()
    }


def test_job_runs_in_process_and_materializes_streamings(
    database_url: str, state_dir: Path
) -> None:
    async def setup() -> Scenario:
        async with migrated_engine(database_url) as engine:
            return await build_mixed_queue(state_dir, engine)

    async def check(scenario: Scenario) -> None:
        async with migrated_engine(database_url) as engine:
            await assert_settled(engine, scenario)

    scenario = run_async(setup())
    result = task.job.execute_in_process(
        resources={"database": Database(url=database_url), "stream": stream_resource(state_dir)},
        run_config={"ops": {OP: {"config": {"page_size": 5, "lookup_batch_size": 2}}}},
        instance=dg.DagsterInstance.get(),
    )
    assert result.success
    assert result.dagster_run.tags[TAG_JOB] == "process_streaming_video_queue"
    [materialization] = result.asset_materializations_for_node(OP)
    assert materialization.asset_key.to_user_string() == "streamings"
    meta = materialization.metadata
    assert meta["processed"].value == 21 and meta["ready"].value == 9
    assert meta["not_found"].value == 4 and meta["still_processing"].value == 3
    assert cast(dict[str, Any], meta["breaker"].value)["state"] == "closed"
    # Smaller pages and lookups: more calls, same outcome.
    assert meta["lookup_calls"].value == 3 and meta["get_calls"].value == 1
    assert meta["api_calls"].value == emulator(state_dir).calls(service="stream")
    run_async(check(scenario))


# -- 10,000 rows: the must-show ---------------------------------------------------------------------


async def build_big_queue(
    state_dir: Path, engine: AsyncEngine, n: int
) -> tuple[dict[int, Expect], dict[str, int]]:
    """n queued rows: ~77% ready, 10% errored, 10% processing, 3% deleted in Stream, plus videos
    of the account that are not queued (in and before the window)."""
    stream = emulator(state_dir)
    now = stream.now()
    base = now - timedelta(seconds=n + 3600)
    done: dict[str, Any] = {"started": now - 3 * HOUR, "final_after_s": 60.0}
    specs: list[VideoSpec] = []
    rows: list[dict[str, Any]] = []
    expects: list[Expect] = []
    deleted: list[str] = []
    kinds = {"ready": 0, "error": 0, "processing": 0, "deleted": 0}
    for i in range(n):
        uid = uid_for(f"big-{i}")
        created = base + timedelta(seconds=i)
        bucket = i % 100
        if bucket < 10:
            kinds["error"] += 1
            specs.append(
                VideoSpec(
                    uid=uid,
                    created=created,
                    outcome="error",
                    error_reason_code="ERR_MALFORMED_VIDEO",
                    **done,
                )
            )
            expects.append(Expect("error", reason="ERR_MALFORMED_VIDEO"))
        elif bucket < 20:
            kinds["processing"] += 1
            specs.append(VideoSpec(uid=uid, created=created, started=now, final_after_s=86_400.0))
            expects.append(Expect("queued"))
        elif bucket < 23:
            kinds["deleted"] += 1
            specs.append(VideoSpec(uid=uid, created=created, **done))
            deleted.append(uid)
            expects.append(Expect("error", reason=NOT_FOUND_REASON))
        else:
            kinds["ready"] += 1
            duration = float(5 + i % 600)
            specs.append(
                VideoSpec(uid=uid, created=created, outcome="ready", duration=duration, **done)
            )
            expects.append(Expect("ready", duration=duration))
        rows.append(
            {
                "external_id": uid,
                "provider": "cloudflare",
                "created_at": created + timedelta(seconds=0.5),
            }
        )
    for i in range(n // 20):  # the account's other videos: inside the window, and long before
        specs.append(
            VideoSpec(
                uid=uid_for(f"other-{i}"), created=base + timedelta(seconds=20 * i + 0.25), **done
            )
        )
        specs.append(
            VideoSpec(
                uid=uid_for(f"older-{i}"), created=base - timedelta(days=2, seconds=i), **done
            )
        )
    stream.add_videos(specs)
    for uid in deleted:
        stream.delete(uid)
    ids = await insert_streamings(engine, rows)
    return dict(zip(ids, expects, strict=True)), kinds


@pytest.mark.parametrize("n", [10_000])
def test_10k_queued_rows_settle_with_under_2_percent_of_one_get_per_row(
    database_url: str, state_dir: Path, n: int
) -> None:
    async def setup() -> tuple[dict[int, Expect], dict[str, int]]:
        async with migrated_engine(database_url) as engine:
            return await build_big_queue(state_dir, engine, n)

    async def check(expected: dict[int, Expect]) -> None:
        async with migrated_engine(database_url) as engine:
            await assert_settled(engine, Scenario(expected, {}, len(expected)))

    expected, kinds = run_async(setup())
    emulator(state_dir).reset_counters()
    started = time.perf_counter()
    result = task.job.execute_in_process(
        resources={"database": Database(url=database_url), "stream": stream_resource(state_dir)},
        instance=dg.DagsterInstance.get(),
    )
    elapsed = time.perf_counter() - started
    assert result.success
    [materialization] = result.asset_materializations_for_node(OP)
    meta = {k: v.value for k, v in materialization.metadata.items()}
    run_async(check(expected))

    assert meta["processed"] == n
    assert meta["ready"] == kinds["ready"]
    assert meta["errored"] == kinds["error"] + kinds["deleted"]
    assert meta["not_found"] == kinds["deleted"]
    assert meta["still_processing"] == kinds["processing"]
    assert meta["failed"] == meta["deferred"] == 0
    served = emulator(state_dir).calls(service="stream")
    assert meta["api_calls"] == served
    assert meta["api_calls"] <= 0.02 * n, meta
    backend = database_url.split(":", 1)[0]
    print(
        f"\nprocess_streaming_video_queue, {n:,} queued rows on {backend} "
        f"({kinds['ready']:,} ready, {kinds['error']:,} errored, {kinds['processing']:,} "
        f"processing, {kinds['deleted']:,} deleted in Stream): {meta['api_calls']} API calls "
        f"(listing {meta['listing_calls']}, id lookups {meta['lookup_calls']}, GETs "
        f"{meta['get_calls']}) = {meta['api_calls_per_row']:.4f} per row, "
        f"{100 * meta['api_calls'] / n:.2f}% of one GET per row ({n:,}) (limit 2%); "
        f"job {elapsed:.1f} s, op {meta['elapsed_s']:.1f} s"
    )


# -- per-video GETs, budgets, failures --------------------------------------------------------------


async def test_without_lookups_unseen_videos_get_one_get_each_within_the_budget(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    scenario = await build_mixed_queue(state_dir, engine)
    resources = {"database": Database(url=database_url), "stream": stream_resource(state_dir)}
    config = VideoQueueConfig(lookup_batch_size=0, max_gets=4, get_concurrency=2)
    with dg.build_op_context(resources=resources) as context:
        meta = metadata_of(await check_queued_videos(context, config))
    # 6 unseen uids (3 deleted, 2 old, 1 odd) but 4 GETs allowed: 2 stay queued, untouched.
    assert meta["get_calls"] == 4 and meta["lookup_calls"] == 0
    assert meta["deferred"] == 2
    assert meta["stopped_early"] == "GET budget of 4 spent"
    rows = await streamings_by_id(engine)
    untouched = [
        i
        for i in scenario.expected
        if rows[i]["status"] == "queued" and rows[i]["checked_at"] is None
    ]
    assert len(untouched) == 2
    assert all(rows[i]["locked_by"] is None and rows[i]["attempts"] == 0 for i in untouched)

    with dg.build_op_context(resources=resources) as context:
        meta = metadata_of(await check_queued_videos(context, config))
    # The next tick asks about the two left over (never checked ones go first).
    assert meta["get_calls"] == 2 and meta["deferred"] == 0
    await assert_settled(engine, scenario)


STREAM_BASE = "https://stream.test/client/v4"
ACCOUNT = "acc0123"
LIST_URL = f"{STREAM_BASE}/accounts/{ACCOUNT}/stream"


def mocked_stream(**overrides: Any) -> CloudflareStream:
    return CloudflareStream(
        account_id=ACCOUNT, api_token="cf-test-token-123456", base_url=STREAM_BASE, **overrides
    )


def envelope(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def json_response(body: Any, status: int = 200) -> httpx.Response:
    # Python's json writes (and reads) Infinity, which a hostile or broken API may send.
    return httpx.Response(
        status, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


def raw_video(uid: str, state: str | None, **fields: Any) -> dict[str, Any]:
    video: dict[str, Any] = {
        "uid": uid,
        "created": "2026-03-01T12:00:00.000000Z",
        "modified": "2026-03-01T12:00:00.000000Z",
        "duration": -1,
        "readyToStream": state == "ready",
        "meta": {},
    }
    if state is not None:
        video["status"] = {"state": state}
    return {**video, **fields}


async def test_malformed_items_fail_their_rows_only_and_dead_letter_at_the_maximum(
    engine: AsyncEngine, database_url: str
) -> None:
    now = datetime.now(UTC)
    good, odd, broken, tired, strange = (
        uid_for(x) for x in ("good", "odd", "broken", "tired", "new")
    )
    ids = await insert_streamings(
        engine,
        [
            {"external_id": good, "created_at": now},
            {"external_id": odd, "created_at": now},
            {"external_id": broken, "created_at": now},
            {"external_id": tired, "created_at": now, "attempts": 4},
            {"external_id": strange, "created_at": now},
        ],
    )
    listing = [
        raw_video(good, "ready", duration="about a minute"),
        raw_video(odd, "ready", duration=float("inf")),
        raw_video(broken, None),
        raw_video(tired, None, status="garbage"),
        raw_video(strange, "live-ended", readyToStream=False),
        {"status": {"state": "ready"}},  # no uid: cannot be matched, ignored
    ]
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(LIST_URL).mock(return_value=json_response(envelope(listing)))
        resources = {"database": Database(url=database_url), "stream": mocked_stream()}
        with dg.build_op_context(resources=resources) as context:
            meta = metadata_of(await check_queued_videos(context, VideoQueueConfig()))
    assert route.call_count == 1  # every row was seen: no lookups needed
    rows = await streamings_by_id(engine)
    g, o, b, t, s = (rows[i] for i in ids)
    assert (g["status"], g["duration"]) == ("ready", None)
    assert (o["status"], o["duration"]) == ("ready", None)
    assert (b["status"], b["attempts"], b["locked_by"]) == ("queued", 1, None)
    assert b["checked_at"] is not None and b["error_reason"] is None
    assert (t["status"], t["attempts"]) == ("error", 5)
    assert "gave up after 5 failed attempts: malformed video" in t["error_reason"]
    assert (s["status"], s["attempts"]) == ("queued", 0) and s["checked_at"] is not None
    assert (meta["failed"], meta["dead_lettered"], meta["malformed_listing_items"]) == (2, 1, 1)
    assert meta["succeeded"] == 3 and meta["processed"] == 5
    async with engine.connect() as conn:
        letters = (await conn.execute(select(DeadLetter))).all()
    assert [(d.source, d.source_id) for d in letters] == [("streamings", str(ids[3]))]
    assert "missing status" in letters[0].error
    assert letters[0].payload["external_id"] == tired


async def test_retryable_lookup_failure_leaves_rows_queued_untouched(
    engine: AsyncEngine, database_url: str
) -> None:
    now = datetime.now(UTC)
    seen, unseen = uid_for("seen"), uid_for("unseen")
    ids = await insert_streamings(
        engine,
        [{"external_id": seen, "created_at": now}, {"external_id": unseen, "created_at": now}],
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if "id" in request.url.params:
            return httpx.Response(503, text="<html>bad gateway</html>")
        return httpx.Response(200, json=envelope([raw_video(seen, "ready", duration=3.0)]))

    with respx.mock(assert_all_called=False) as mock:
        mock.get(LIST_URL).mock(side_effect=answer)
        resources = {
            "database": Database(url=database_url),
            "stream": mocked_stream(max_attempts=1),
        }
        with dg.build_op_context(resources=resources) as context:
            meta = metadata_of(await check_queued_videos(context, VideoQueueConfig()))
    assert (meta["ready"], meta["deferred"], meta["lookup_calls"]) == (1, 1, 1)
    rows = await streamings_by_id(engine)
    assert rows[ids[0]]["status"] == "ready"
    left = rows[ids[1]]
    assert (left["status"], left["attempts"], left["checked_at"], left["locked_by"]) == (
        "queued",
        0,
        None,
        None,
    )


async def test_401_fails_the_task_without_retries_and_gives_the_rows_back(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await insert_streamings(
        engine,
        [{"external_id": uid_for(str(i)), "created_at": datetime.now(UTC)} for i in range(3)],
    )
    before = await streamings_by_id(engine)
    failure = {
        "success": False,
        "errors": [{"code": 10000, "message": "Authentication error"}],
        "messages": [],
        "result": None,
    }
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(LIST_URL).mock(return_value=httpx.Response(401, json=failure))
        resources = {"database": Database(url=database_url), "stream": mocked_stream()}
        with (
            dg.build_op_context(resources=resources) as context,
            pytest.raises(dg.Failure) as caught,
        ):
            await check_queued_videos(context, VideoQueueConfig())
    assert route.call_count == 1
    assert caught.value.allow_retries is False
    assert "HTTP 401 unauthorized" in str(caught.value.description)
    assert "cf-test-token" not in str(caught.value.description)
    assert caught.value.metadata["count_processed"].value == 3
    after = await streamings_by_id(engine)
    for row_id in ids:
        assert after[row_id]["locked_by"] is None
        assert {k: v for k, v in after[row_id].items() if k != "updated_at"} == {
            k: v for k, v in before[row_id].items() if k != "updated_at"
        }


async def test_an_open_circuit_fails_fast_without_calling_stream(
    engine: AsyncEngine, database_url: str
) -> None:
    await insert_streamings(
        engine, [{"external_id": uid_for("x"), "created_at": datetime.now(UTC)}]
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(CircuitBreaker).values(
                service="cloudflare_stream",
                state="open",
                consecutive_failures=5,
                opened_until=datetime.now(UTC) + HOUR,
                last_error="cloudflare_stream HTTP 503 server_error: down",
            )
        )
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(LIST_URL).mock(return_value=httpx.Response(200, json=envelope([])))
        resources = {"database": Database(url=database_url), "stream": mocked_stream()}
        with (
            dg.build_op_context(resources=resources) as context,
            pytest.raises(dg.Failure) as caught,
        ):
            await check_queued_videos(context, VideoQueueConfig())
    assert route.call_count == 0
    assert "circuit open for cloudflare_stream" in str(caught.value.description)
    assert caught.value.allow_retries is False
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).where(VideoCheck.locked_by.is_not(None))) == 0


# -- leases: cancellation and concurrent runs -------------------------------------------------------


async def test_cancelled_run_gives_back_every_leased_row(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    await build_mixed_queue(state_dir, engine)
    # The listing (the run's first request) is held in flight: it hangs until cancelled, not for
    # 30 s that a loaded machine could use up before the cancel.
    emulator(state_dir).configure(hold_requests=[1])
    resources = {"database": Database(url=database_url), "stream": stream_resource(state_dir)}

    async def leased() -> int:
        async with engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).where(VideoCheck.locked_by.like("EPHEMERAL:%"))
            )
        return int(count or 0)

    with dg.build_op_context(resources=resources) as context:
        run = asyncio.create_task(check_queued_videos(context, VideoQueueConfig()))
        count, _ = await poll(leased, timeout=60)
        # 21 leased; the 2 without an external id may already be settled (no call needed).
        assert count in (19, 21)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert await leased() == 0
    rows = await streamings_by_id(engine)
    assert all(r["locked_until"] is None for r in rows.values() if r["locked_by"] is None)


async def test_two_runs_at_once_never_settle_a_row_twice(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    scenario = await build_mixed_queue(state_dir, engine)
    resources = {"database": Database(url=database_url), "stream": stream_resource(state_dir)}
    with (
        dg.build_op_context(resources=resources) as first,
        dg.build_op_context(resources=resources) as second,
    ):
        outputs = await asyncio.gather(
            check_queued_videos(first, VideoQueueConfig()),
            check_queued_videos(second, VideoQueueConfig()),
        )
    metas = [metadata_of(o) for o in outputs]
    # One run leases all 21. The other leases none if its lease lands while they are held, or
    # only the 3 still processing if it lands after the first gave those back: which one
    # depends on scheduling, and either way no row is settled twice.
    assert sorted(m["processed"] for m in metas) in ([0, 21], [3, 21])
    assert sum(m["ready"] for m in metas) == 9
    assert sum(m["errored"] for m in metas) == 9
    await assert_settled(engine, scenario)


# -- definitions --------------------------------------------------------------------------------------


def test_definitions_load_with_the_fixed_names_crons_and_limits(tmp_path: Path) -> None:
    defs = dg.Definitions(
        jobs=[task.job],
        resources={
            "database": Database(url=f"sqlite:///{tmp_path / 'app.db'}"),
            "stream": stream_resource(tmp_path / "emulators"),
        },
    )
    dg.Definitions.validate_loadable(defs)
    assert task.job.name == "process_streaming_video_queue"
    assert task.TASK.timeout == timedelta(minutes=2)
    policy = task.TASK.retry.policy if task.TASK.retry else None
    assert policy is not None
    assert (policy.max_retries, policy.delay, policy.backoff, policy.jitter) == (
        3,
        30,
        dg.Backoff.EXPONENTIAL,
        dg.Jitter.PLUS_MINUS,
    )
    required = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "CLOUDFLARE_ACCOUNT_ID": "account",
        "CLOUDFLARE_STREAM_API_TOKEN": "token-value",
        "RESEND_API_KEY": "re_key_value",
        "EMAIL_FROM": "Alianza <jobs@alianza.test>",
    }
    crons = {
        env: task.TASK.cron_for(load_settings({"ALIANZA_ENV": env, **required}))
        for env in ("local", "dev", "uat", "prod")
    }
    assert crons == {
        "local": "*/5 * * * *",
        "dev": "*/10 * * * *",
        "uat": "*/15 * * * *",
        "prod": "*/5 * * * *",
    }
