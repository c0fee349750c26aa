"""sync_stream_catalog: the mirror follows Stream's catalog; a crash between the commit of a page
and the watermark write is harmless. On SQLite and on the real Postgres, against the in-process
emulator (and a respx-mocked API for malformed answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import dagster as dg
import httpx
import pytest
import respx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.stream import parse_video
from alianza_jobs.db.models import StreamVideo, SyncState
from alianza_jobs.defs.videos import sync_stream_catalog as sync
from alianza_jobs.defs.videos.catalog_mirror import MIRRORED, mirror_values
from alianza_jobs.defs.videos.catalog_watermark import read_watermark
from alianza_jobs.defs.videos.sync_stream_catalog import CatalogSyncConfig, mirror_stream_catalog
from alianza_jobs.emulators import VideoSpec
from alianza_jobs.platform.tags import TAG_JOB
from alianza_jobs.resources import CloudflareStream, Database
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.conftest import REPO
from alianza_jobs_tests.db.helpers import migrated_engine
from alianza_jobs_tests.defs.videos.fixtures import (
    emulator,
    metadata_of,
    run_async,
    stream_resource,
    uid_for,
)

HOUR = timedelta(hours=1)
OP = "mirror_stream_catalog"


def fill_catalog(state_dir: Path, n: int, *, label: str = "cat") -> list[str]:
    """n videos a minute apart, the newest a minute old: 80% settled (ready or error), 20% still
    processing for the next ten hours. Emulated time stands still from here (only an explicit
    advance moves it), so a video still processing reports the same progress however long the
    test takes: the catalog does not change under the test."""
    stream = emulator(state_dir)
    now = stream.now()
    stream.store.update_config({"frozen_clock_s": now.timestamp()})
    specs = []
    for i in range(n):
        created = now - timedelta(minutes=n - i)
        if i % 5 == 4:
            spec = VideoSpec(
                uid=uid_for(f"{label}-{i}"),
                created=created,
                started=now,
                final_after_s=36_000.0,
                meta={"name": f"clip-{i}.mp4", "n": i},
            )
        else:
            spec = VideoSpec(
                uid=uid_for(f"{label}-{i}"),
                created=created,
                started=now - 3 * HOUR,
                final_after_s=60.0,
                outcome="error" if i % 10 == 3 else "ready",
                duration=float(i % 300) + 0.5,
                meta={"name": f"clip-{i}.mp4", "n": i},
            )
        specs.append(spec)
    return stream.add_videos(specs)


def expected_mirror(state_dir: Path, uids: list[str]) -> dict[str, dict[str, Any]]:
    """What the mirror must hold: each video as the API describes it now (deleted ones absent)."""
    stream = emulator(state_dir)
    out = {}
    for uid in uids:
        raw = stream.get(uid)
        if raw is None:
            continue
        values = mirror_values(parse_video(raw))
        assert isinstance(values, dict)
        out[uid] = {c: values[c] for c in MIRRORED}
    return out


async def mirror_of(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    columns = [StreamVideo.uid, *(getattr(StreamVideo, c) for c in MIRRORED)]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(*columns).where(StreamVideo.deleted_at.is_(None)))).all()
    return {r.uid: {c: getattr(r, c) for c in MIRRORED} for r in rows}


async def updated_at_of(engine: AsyncEngine) -> dict[str, datetime]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(StreamVideo.uid, StreamVideo.updated_at))).all()
    return {r.uid: r.updated_at for r in rows}


def newest_created(state_dir: Path, uids: list[str]) -> datetime:
    stream = emulator(state_dir)
    created = [parse_video(v).created for u in uids if (v := stream.get(u)) is not None]
    return max(c for c in created if c is not None)


async def run_op(database_url: str, state_dir: Path, **config: Any) -> dict[str, Any]:
    resources = {"database": Database(url=database_url), "stream": stream_resource(state_dir)}
    with dg.build_op_context(resources=resources) as context:
        output = await mirror_stream_catalog(context, CatalogSyncConfig(**config))
    return metadata_of(output)


# -- the op against the emulator ---------------------------------------------------------------------


async def test_first_sync_mirrors_the_catalog_and_sets_the_watermark(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    uids = fill_catalog(state_dir, 2_500)
    meta = await run_op(database_url, state_dir)
    assert (meta["listed"], meta["inserted"], meta["updated"], meta["unchanged"]) == (
        2_500,
        2_500,
        0,
        0,
    )
    assert (meta["pages"], meta["failed"], meta["deleted"]) == (3, 0, 0)
    assert meta["api_calls"] == 3
    assert await mirror_of(engine) == expected_mirror(state_dir, uids)
    assert await read_watermark(engine) == newest_created(state_dir, uids)
    assert meta["watermark"] == newest_created(state_dir, uids).isoformat()


async def test_a_rerun_changes_nothing_and_lists_only_from_the_unsettled(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    uids = fill_catalog(state_dir, 300)
    await run_op(database_url, state_dir)
    stamps = await updated_at_of(engine)
    watermark = await read_watermark(engine)

    meta = await run_op(database_url, state_dir, overlap_seconds=0)
    assert (meta["inserted"], meta["updated"], meta["deleted"]) == (0, 0, 0)
    assert meta["unchanged"] == meta["listed"] > 0
    # The oldest video still processing is #4: without an overlap the listing starts there.
    assert meta["listed"] == 300 - 4
    assert await updated_at_of(engine) == stamps  # unchanged rows are not written at all
    assert await read_watermark(engine) == watermark
    assert await mirror_of(engine) == expected_mirror(state_dir, uids)


async def test_videos_still_processing_are_refreshed_until_they_settle(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    uids = fill_catalog(state_dir, 50)
    await run_op(database_url, state_dir)
    mirrored = await mirror_of(engine)
    assert sum(1 for v in mirrored.values() if v["state"] not in ("ready", "error")) == 10

    emulator(state_dir).advance_clock(40_000)  # every video finishes processing
    meta = await run_op(database_url, state_dir)
    assert meta["updated"] == 10
    mirrored = await mirror_of(engine)
    assert all(v["state"] in ("ready", "error") for v in mirrored.values())
    assert mirrored == expected_mirror(state_dir, uids)

    # Nothing left to refresh: the next listing starts at the watermark, minus the 5-minute
    # overlap: the newest video (a minute old) and the six before it, the last one on the edge.
    meta = await run_op(database_url, state_dir)
    assert meta["listed"] == meta["unchanged"] == 6


async def test_videos_deleted_in_stream_are_soft_deleted_in_the_mirror(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    uids = fill_catalog(state_dir, 40)
    await run_op(database_url, state_dir, page_size=7)
    stream = emulator(state_dir)
    gone = [uids[9], uids[14], uids[39]]  # inside the next listing's window (#4 still processes)
    for uid in gone:
        assert stream.delete(uid)

    meta = await run_op(database_url, state_dir, page_size=7)
    assert meta["deleted"] == 3
    assert await mirror_of(engine) == expected_mirror(state_dir, uids)
    async with engine.connect() as conn:
        soft = set(
            (
                await conn.scalars(
                    select(StreamVideo.uid).where(StreamVideo.deleted_at.is_not(None))
                )
            ).all()
        )
    assert soft == set(gone)

    # A deletion before the listed window (an old, settled video) is only noticed by a full
    # resync: without an overlap the listing starts at #4, the oldest video still processing.
    assert stream.delete(uids[0])
    meta = await run_op(database_url, state_dir, overlap_seconds=0)
    assert meta["deleted"] == 0
    meta = await run_op(database_url, state_dir, full_resync=True)
    assert meta["deleted"] == 1
    assert await mirror_of(engine) == expected_mirror(state_dir, uids)


async def test_dry_run_counts_and_writes_nothing(
    engine: AsyncEngine, database_url: str, state_dir: Path
) -> None:
    fill_catalog(state_dir, 30)
    meta = await run_op(database_url, state_dir, dry_run=True)
    assert (meta["inserted"], meta["dry_run"]) == (30, True)
    assert await mirror_of(engine) == {}
    assert await read_watermark(engine) is None


# -- a crash between the page's commit and the watermark ----------------------------------------


class InjectedCrash(RuntimeError):
    pass


async def test_crash_between_upsert_and_watermark_then_rerun_is_consistent(
    engine: AsyncEngine, database_url: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uids = fill_catalog(state_dir, 250)
    real_write = sync.write_watermark
    writes: list[datetime] = []

    async def crash_on_second_page(engine: AsyncEngine, value: datetime, **kw: Any) -> None:
        if writes:
            raise InjectedCrash("killed between the page's commit and its watermark")
        writes.append(value)
        await real_write(engine, value, **kw)

    monkeypatch.setattr(sync, "write_watermark", crash_on_second_page)
    with pytest.raises(InjectedCrash):
        await run_op(database_url, state_dir, page_size=100)
    # Two pages committed, only the first one's watermark written.
    assert len(await mirror_of(engine)) == 200
    first_watermark = await read_watermark(engine)
    assert first_watermark == writes[0]

    monkeypatch.setattr(sync, "write_watermark", real_write)
    meta = await run_op(database_url, state_dir, page_size=100)
    assert meta["failed"] == 0
    assert meta["inserted"] == 50  # the third page; the second is found already there
    assert meta["updated"] == 0
    assert await mirror_of(engine) == expected_mirror(state_dir, uids)
    assert await read_watermark(engine) == newest_created(state_dir, uids)


def test_killed_process_between_upsert_and_watermark_then_rerun_is_consistent(
    database_url: str, state_dir: Path, dagster_home: Path
) -> None:
    """A real crash: the run's process is SIGKILLed right after its first page is committed."""
    uids = fill_catalog(state_dir, 250)
    run_async(_migrate(database_url))
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        import dagster as dg
        from alianza_jobs.resources import Database
        from alianza_jobs.defs.videos import sync_stream_catalog as sync
        from alianza_jobs_tests.defs.videos.fixtures import stream_resource

        async def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        sync.write_watermark = die

        async def main():
            resources = {{
                "database": Database(url={database_url!r}),
                "stream": stream_resource({str(state_dir)!r}),
            }}
            with dg.build_op_context(resources=resources) as context:
                await sync.mirror_stream_catalog(context, sync.CatalogSyncConfig(page_size=100))

        asyncio.run(main())
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == -9, process.stderr[-2000:]

    async def after_crash() -> tuple[int, datetime | None]:
        async with migrated_engine(database_url) as engine:
            return len(await mirror_of(engine)), await read_watermark(engine)

    assert run_async(after_crash()) == (100, None)  # the page is committed, its watermark not

    result = sync.job.execute_in_process(
        resources={"database": Database(url=database_url), "stream": stream_resource(state_dir)},
        run_config={"ops": {OP: {"config": {"page_size": 100}}}},
        instance=dg.DagsterInstance.get(),
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node(OP)
    assert materialization.metadata["inserted"].value == 150
    assert materialization.metadata["unchanged"].value == 100

    async def final() -> tuple[dict[str, dict[str, Any]], datetime | None]:
        async with migrated_engine(database_url) as engine:
            return await mirror_of(engine), await read_watermark(engine)

    mirror, watermark = run_async(final())
    assert mirror == expected_mirror(state_dir, uids)
    assert watermark == newest_created(state_dir, uids)


async def _migrate(url: str) -> None:
    async with migrated_engine(url):
        pass


def test_watermark_never_moves_backwards(database_url: str) -> None:
    async def go() -> list[datetime | None]:
        async with migrated_engine(database_url) as engine:
            t = datetime.fromisoformat("2026-03-01T12:00:00.123456+00:00")
            seen = []
            for value in (t, t - HOUR, t + HOUR, t):
                await sync.write_watermark(engine, value)
                seen.append(await read_watermark(engine))
            async with engine.connect() as conn:
                names = (await conn.scalars(select(SyncState.name))).all()
            assert names == ["stream_catalog"]
            return seen

    t = datetime.fromisoformat("2026-03-01T12:00:00.123456+00:00")
    assert run_async(go()) == [t, t, t + HOUR, t + HOUR]


# -- the job -------------------------------------------------------------------------------------------


def test_job_runs_in_process_and_materializes_stream_videos(
    database_url: str, state_dir: Path
) -> None:
    uids = fill_catalog(state_dir, 120)
    run_async(_migrate(database_url))
    result = sync.job.execute_in_process(
        resources={"database": Database(url=database_url), "stream": stream_resource(state_dir)},
        run_config={"ops": {OP: {"config": {"page_size": 50}}}},
        instance=dg.DagsterInstance.get(),
    )
    assert result.success
    assert result.dagster_run.tags[TAG_JOB] == "sync_stream_catalog"
    [materialization] = result.asset_materializations_for_node(OP)
    assert materialization.asset_key.to_user_string() == "stream_videos"
    meta = materialization.metadata
    assert (meta["inserted"].value, meta["pages"].value, meta["api_calls"].value) == (120, 3, 3)
    assert cast(dict[str, Any], meta["breaker"].value)["state"] == "closed"

    async def check() -> None:
        async with migrated_engine(database_url) as engine:
            assert await mirror_of(engine) == expected_mirror(state_dir, uids)
            assert await read_watermark(engine) == newest_created(state_dir, uids)

    run_async(check())


# -- malformed answers and failures (respx) -----------------------------------------------------------

STREAM_BASE = "https://stream.test/client/v4"
ACCOUNT = "acc0123"
LIST_URL = f"{STREAM_BASE}/accounts/{ACCOUNT}/stream"


def mocked_stream() -> CloudflareStream:
    return CloudflareStream(
        account_id=ACCOUNT, api_token="cf-test-token-123456", base_url=STREAM_BASE, max_attempts=1
    )


def json_response(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


async def test_malformed_items_are_mirrored_as_far_as_they_can_be_read(
    engine: AsyncEngine, database_url: str
) -> None:
    created = "2026-03-01T12:00:0{}.000000Z"
    items = [
        {
            "uid": uid_for("a"),
            "status": {"state": "ready"},
            "duration": "long",
            "created": created.format(1),
        },
        {
            "uid": uid_for("b"),
            "status": {"state": "live-ended"},
            "duration": 4,
            "created": created.format(2),
        },
        {
            "uid": uid_for("c"),
            "status": {"state": "error", "errReasonCode": "ERR_X" * 20},
            "created": "yesterday",
        },
        {"status": {"state": "ready"}, "created": created.format(3)},  # no uid
        {"uid": uid_for("d"), "created": created.format(4)},  # no status
    ]
    body = {"success": True, "errors": [], "messages": [], "result": items}
    with respx.mock(assert_all_called=False) as mock:
        mock.get(LIST_URL).mock(return_value=json_response(body))
        resources = {"database": Database(url=database_url), "stream": mocked_stream()}
        with dg.build_op_context(resources=resources) as context:
            meta = metadata_of(await mirror_stream_catalog(context, CatalogSyncConfig()))
    assert (meta["listed"], meta["inserted"], meta["failed"]) == (5, 3, 2)
    assert meta["succeeded"] == 3
    mirror = await mirror_of(engine)
    assert mirror[uid_for("a")]["state"] == "ready" and mirror[uid_for("a")]["duration"] is None
    assert mirror[uid_for("b")]["state"] == "live-ended"
    assert mirror[uid_for("c")]["error_reason_code"] == ("ERR_X" * 20)[:64]
    assert mirror[uid_for("c")]["stream_created"] is None
    assert await read_watermark(engine) == datetime.fromisoformat("2026-03-01T12:00:04+00:00")


async def test_401_fails_without_retries_and_keeps_the_watermark(
    engine: AsyncEngine, database_url: str
) -> None:
    await sync.write_watermark(engine, datetime.fromisoformat("2026-03-01T00:00:00+00:00"))
    failure = {
        "success": False,
        "errors": [{"code": 10000, "message": "Authentication error"}],
        "messages": [],
        "result": None,
    }
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(LIST_URL).mock(return_value=json_response(failure, 401))
        resources = {"database": Database(url=database_url), "stream": mocked_stream()}
        with (
            dg.build_op_context(resources=resources) as context,
            pytest.raises(dg.Failure) as caught,
        ):
            await mirror_stream_catalog(context, CatalogSyncConfig())
    assert route.call_count == 1
    assert caught.value.allow_retries is False
    assert "HTTP 401 unauthorized" in str(caught.value.description)
    assert "cf-test-token" not in str(caught.value.description)
    assert await read_watermark(engine) == datetime.fromisoformat("2026-03-01T00:00:00+00:00")


# -- definitions -------------------------------------------------------------------------------------


def test_definitions_load_with_the_fixed_names_crons_and_limits(tmp_path: Path) -> None:
    defs = dg.Definitions(
        jobs=[sync.job],
        resources={
            "database": Database(url=f"sqlite:///{tmp_path / 'app.db'}"),
            "stream": stream_resource(tmp_path / "emulators"),
        },
    )
    dg.Definitions.validate_loadable(defs)
    assert sync.job.name == "sync_stream_catalog"
    assert sync.TASK.timeout == timedelta(minutes=10)
    policy = sync.TASK.retry.policy if sync.TASK.retry else None
    assert policy is not None
    assert (policy.max_retries, policy.delay, policy.backoff, policy.jitter) == (3, 30, None, None)
    assert sync.TASK.cron_for(load_settings({})) == "*/15 * * * *"
    assert sync.TASK.assets == ["stream_videos"]
