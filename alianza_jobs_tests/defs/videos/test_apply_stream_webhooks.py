"""``apply_stream_webhooks``: the stored deliveries settle their videos in one run, in batches,
by the deliveries' own state (one lookup for a delivery that cannot be read), leaving alone the
rows another run holds and the uids the platform does not know; every delivery ends applied."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.videos import apply_stream_webhooks as task
from alianza_jobs.defs.videos.webhook_sql import DELIVERIES, store_delivery
from alianza_jobs.emulators import VideoSpec
from alianza_jobs.resources import Database
from alianza_jobs_tests.db.helpers import migrated_engine
from alianza_jobs_tests.defs.videos.fixtures import (
    emulator,
    insert_streamings,
    run_async,
    stream_resource,
    streamings_by_id,
    uid_for,
)

OP = "settle_delivered_videos"


def delivered(uid: str, state: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"uid": uid, **extra}
    if state is not None:
        body["status"] = {"state": state, **extra.pop("status", {})}
    return body


async def deliver(engine: AsyncEngine, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        raw = json.dumps(body).encode()
        await store_delivery(
            engine,
            body_sha256=hashlib.sha256(raw).hexdigest(),
            uid=body["uid"],
            state=(body.get("status") or {}).get("state"),
            payload=body,
            now=utcnow(),
        )


async def outcomes(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(DELIVERIES.c.uid, DELIVERIES.c.outcome))).all()
    return {r.uid: r.outcome for r in rows}


def run_job(database_url: str, state_dir: Path, **config: Any) -> dg.ExecuteInProcessResult:
    return task.job.execute_in_process(
        resources={"database": Database(url=database_url), "stream": stream_resource(state_dir)},
        run_config={"ops": {OP: {"config": config}}} if config else None,
        instance=dg.DagsterInstance.get(),
    )


def test_deliveries_settle_their_videos_and_end_applied(database_url: str, state_dir: Path) -> None:
    uids = {label: uid_for(label) for label in ("ready", "error", "late", "unreadable", "held")}
    uids["unknown"] = uid_for("unknown")
    uids["done"] = uid_for("done")
    # The unreadable delivery's video, as Stream tells it to the one lookup.
    emulator(state_dir).add_videos(
        [VideoSpec(uid=uids["unreadable"], outcome="ready", duration=7.0, final_after_s=0)]
    )

    async def setup() -> dict[str, int]:
        async with migrated_engine(database_url) as engine:
            ids = await insert_streamings(
                engine,
                [
                    {"external_id": uids["ready"]},
                    {"external_id": uids["error"]},
                    {"external_id": uids["late"]},
                    {"external_id": uids["unreadable"]},
                    {
                        "external_id": uids["held"],
                        "locked_by": "a-video-queue-run",
                        "locked_until": utcnow() + timedelta(minutes=2),
                    },
                    {"external_id": uids["done"], "status": "ready", "duration": 3.0},
                ],
            )
            await deliver(
                engine,
                [
                    delivered(uids["ready"], "ready", duration=42.5),
                    delivered(
                        uids["error"],
                        "error",
                        status={"errorReasonCode": "ERR_NON_VIDEO", "errorReasonText": "no"},
                    ),
                    delivered(uids["unreadable"], None),
                    delivered(uids["held"], "ready", duration=1.0),
                    delivered(uids["done"], "ready", duration=3.0),
                    delivered(uids["unknown"], "ready", duration=9.0),
                ],
            )
            return dict(zip(("ready", "error", "late", "unreadable", "held"), ids, strict=False))

    ids = run_async(setup())
    result = run_job(database_url, state_dir, batch_size=2)
    assert result.success
    [materialization] = result.asset_materializations_for_node(OP)
    assert materialization.asset_key.to_user_string() == "streamings"
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["deliveries"] == 6
    assert (meta["applied"], meta["ready"], meta["errored"]) == (3, 2, 1)
    assert (meta["already_settled"], meta["unknown_uid"]) == (2, 1)
    assert meta["lookup_calls"] == 1

    async def check() -> None:
        async with migrated_engine(database_url) as engine:
            rows = await streamings_by_id(engine)
            assert (rows[ids["ready"]]["status"], rows[ids["ready"]]["duration"]) == ("ready", 42.5)
            assert rows[ids["error"]]["status"] == "error"
            assert rows[ids["unreadable"]]["status"] == "ready"
            # Not delivered: left to the queue. Held by a queue run: that run settles it.
            assert rows[ids["late"]]["status"] == "queued"
            assert rows[ids["held"]]["status"] == "queued"
            assert rows[ids["held"]]["locked_by"] == "a-video-queue-run"
            assert await outcomes(engine) == {
                uids["ready"]: "applied",
                uids["error"]: "applied",
                uids["unreadable"]: "applied",
                uids["held"]: "already_settled",
                uids["done"]: "already_settled",
                uids["unknown"]: "unknown_uid",
            }

    run_async(check())
    again = run_job(database_url, state_dir)
    assert again.success
    [second] = again.asset_materializations_for_node(OP)
    assert second.metadata["deliveries"].value == 0


def test_a_flood_of_deliveries_is_settled_in_batches_by_one_run(
    database_url: str, state_dir: Path
) -> None:
    count = 1200
    uids = [uid_for(f"flood-{i}") for i in range(count)]

    async def setup() -> None:
        async with migrated_engine(database_url) as engine:
            await insert_streamings(engine, [{"external_id": uid} for uid in uids])
            await deliver(
                engine, [delivered(uid, "ready", duration=float(i)) for i, uid in enumerate(uids)]
            )

    run_async(setup())
    result = run_job(database_url, state_dir)
    assert result.success
    [materialization] = result.asset_materializations_for_node(OP)
    assert materialization.metadata["applied"].value == count
    assert materialization.metadata["lookup_calls"].value == 0

    async def check() -> None:
        async with migrated_engine(database_url) as engine:
            rows = await streamings_by_id(engine)
            assert {r["status"] for r in rows.values()} == {"ready"}
            assert set((await outcomes(engine)).values()) == {"applied"}

    run_async(check())
