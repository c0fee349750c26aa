"""The webhook receiver SIGKILLed between storing a delivery and answering it: Stream (the
emulator's dispatcher, over a real socket) got no answer and retries; the restarted receiver
stores nothing twice, and every video's delivery is stored exactly once and then applied.

Each seed kills the receiver after a different store. Time is the emulator's frozen clock (the
retry comes when the test advances it, not when a timer fires), and the receiver's death is a
real synchronization point: the child's exit.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest
from sqlalchemy import func, select

from alianza_jobs.db.engine import create_engine
from alianza_jobs.defs.videos import apply_stream_webhooks
from alianza_jobs.defs.videos.webhook_sql import DELIVERIES
from alianza_jobs.emulators import EMULATOR_ACCOUNT_ID, StreamEmulator, VideoSpec
from alianza_jobs.emulators.stream_webhooks import set_webhook
from alianza_jobs.resources import Database
from alianza_jobs_tests.conftest import REPO
from alianza_jobs_tests.defs.videos.fixtures import (
    insert_streamings,
    stream_resource,
    streamings_by_id,
    uid_for,
)
from alianza_jobs_tests.processes import free_port, stop_process, wait_until_answers
from alianza_jobs_tests.reliability.conftest import Outcomes

SECRET = "whsec-reliability-0123456789abcdef"
VIDEOS = 8
T0 = 1_767_268_800.0


def start_receiver(database_url: str, port: int, die_after: int | None) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": database_url,
        "CLOUDFLARE_STREAM_WEBHOOK_SECRET": SECRET,
        "DAGSTER_HOME": os.environ["DAGSTER_HOME"],
    }
    if die_after is not None:
        env["ALIANZA_TEST_RECEIVER_DIE_AFTER_STORE"] = str(die_after)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alianza_jobs_tests.reliability.receiver_crashsite",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/healthz"
    wait_until_answers(url, proc, timeout_s=60, what="the webhook receiver")
    return proc


async def stored_rows(database_url: str) -> tuple[int, int]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(select(func.count(), func.count(DELIVERIES.c.uid.distinct())))
            ).one()
    finally:
        await engine.dispose()
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("seed", range(4))
def test_a_receiver_killed_between_store_and_answer_stores_each_delivery_once(
    seed: int, pg_url: str, tmp_path: Path, outcome: Outcomes
) -> None:
    die_after = random.Random(seed).randint(1, VIDEOS)
    state = tmp_path / "stream"
    stream = StreamEmulator(state)
    stream.update_config({"frozen_clock_s": T0, "stream": {"webhook_secret": SECRET}})
    port = free_port()
    now_us = int(T0 * 1e6)
    set_webhook(
        stream.store,
        f"http://127.0.0.1:{port}/stream/webhook",
        account_id=EMULATOR_ACCOUNT_ID,
        secret=SECRET,
        modified_us=now_us,
    )
    uids = [uid_for(f"crash-{seed}-{i}") for i in range(VIDEOS)]
    stream.add_videos(
        [
            VideoSpec(uid=uid, outcome="ready", duration=float(i + 1), final_after_s=0)
            for i, uid in enumerate(uids)
        ]
    )
    asyncio.run(_platform_rows(pg_url, uids))

    receiver = start_receiver(pg_url, port, die_after)
    runs = 1

    async def dispatch() -> int:
        # One delivery at a time, as the kill must land between two of them.
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=1)) as client:
            return await stream.dispatch_webhooks(client)

    asyncio.run(dispatch())
    # The receiver died after its Nth store: the real end of that attempt, not a timer.
    assert receiver.wait(timeout=60) == -9
    assert b"SIGKILL at webhook store" in (receiver.stderr.read() if receiver.stderr else b"")
    receiver = start_receiver(pg_url, port, None)
    runs += 1
    try:
        for _ in range(stream.config().stream.webhook_max_attempts):
            # Stream retries what got no answer, after its delay.
            stream.advance_clock(60)
            asyncio.run(dispatch())
            if all(d["delivered_us"] for d in stream.webhook_deliveries()):
                break
    finally:
        stop_process(receiver)

    total, distinct = asyncio.run(stored_rows(pg_url))
    acknowledged = [d["uid"] for d in stream.webhook_deliveries() if d["delivered_us"]]
    assert sorted(acknowledged) == sorted(uids)
    # At least the killed one went out twice: stored, unanswered, sent again.
    assert sum(d["attempts"] > 1 for d in stream.webhook_deliveries()) >= 1
    assert (total, distinct) == (VIDEOS, VIDEOS)  # the killed one's retry was stored once

    result = apply_stream_webhooks.job.execute_in_process(
        resources={"database": Database(url=pg_url), "stream": stream_resource(state)},
        instance=dg.DagsterInstance.get(),
    )
    assert result.success
    rows = asyncio.run(_statuses(pg_url))
    lost = sum(1 for status in rows.values() if status != "ready")
    outcome.add(
        "crash",
        "webhook receiver SIGKILLed between a delivery's store and its answer",
        runs=runs,
        items=VIDEOS,
        lost=lost + (VIDEOS - distinct),
        duplicated=total - distinct,
    )
    assert lost == 0


async def _platform_rows(url: str, uids: list[str]) -> None:
    engine = create_engine(url)
    try:
        await insert_streamings(engine, [{"external_id": uid} for uid in uids])
    finally:
        await engine.dispose()


async def _statuses(url: str) -> dict[int, str]:
    engine = create_engine(url)
    try:
        return {k: str(v["status"]) for k, v in (await streamings_by_id(engine)).items()}
    finally:
        await engine.dispose()
