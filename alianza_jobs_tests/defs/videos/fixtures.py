"""Helpers shared by the Stream task tests (import explicitly; not a conftest)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import VideoCheck
from alianza_jobs.db.platform_models import Streaming
from alianza_jobs.emulators import EMULATOR_ACCOUNT_ID, EMULATOR_STREAM_TOKEN, StreamEmulator
from alianza_jobs.resources import EmulatedCloudflareStream
from alianza_jobs_tests.db.helpers import migrated_engine

T = TypeVar("T")


def uid_for(label: str) -> str:
    """A stable, valid Stream uid (32 lowercase hex) for a test label."""
    return hashlib.sha256(label.encode()).hexdigest()[:32]


def stream_resource(state_dir: Path, **overrides: Any) -> EmulatedCloudflareStream:
    """The Stream resource served by the in-process emulator in ``state_dir``."""
    return EmulatedCloudflareStream(
        account_id=EMULATOR_ACCOUNT_ID,
        api_token=EMULATOR_STREAM_TOKEN,
        emulator_state_dir=str(state_dir),
        **overrides,
    )


def emulator(state_dir: Path) -> StreamEmulator:
    return StreamEmulator(state_dir)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """execute_in_process runs the async op on an event loop of its own, so job tests are plain
    functions that do their database set-up and checks through asyncio.run."""
    return asyncio.run(coro)


def metadata_of(output: Any) -> dict[str, Any]:
    return {key: value.value for key, value in output.metadata.items()}


ROW_DEFAULTS: dict[str, Any] = {
    "external_id": None,
    "provider": "cloudflare",
    "status": "queued",
    "duration": None,
    "deleted_at": None,
}
# The video queue's bookkeeping, in the jobs' video_checks: what a row without a check reads as.
CHECK_DEFAULTS: dict[str, Any] = {
    "attempts": 0,
    "checked_at": None,
    "error_reason": None,
    "locked_by": None,
    "locked_until": None,
}


async def insert_streamings(engine: AsyncEngine, rows: list[dict[str, Any]]) -> list[int]:
    """Insert platform rows (chunked, bulk; every row gets the same keys); returns their ids in
    order. Bookkeeping keys (``attempts``, ``locked_by``, ...) go to a ``video_checks`` row of
    their own, made only for the rows that set one, as if an earlier run had checked them."""
    platform = [
        {**ROW_DEFAULTS, **{k: v for k, v in row.items() if k not in CHECK_DEFAULTS}}
        for row in rows
    ]
    ids: list[int] = []
    async with engine.begin() as conn:
        for start in range(0, len(platform), 2000):
            chunk = platform[start : start + 2000]
            result = await conn.execute(
                insert(Streaming).returning(Streaming.id, sort_by_parameter_order=True), chunk
            )
            ids += list(result.scalars())
        checks = [
            {
                **CHECK_DEFAULTS,
                **{k: v for k, v in row.items() if k in CHECK_DEFAULTS},
                "streaming_id": str(i),
            }
            for i, row in zip(ids, rows, strict=True)
            if any(k in CHECK_DEFAULTS for k in row)
        ]
        for start in range(0, len(checks), 2000):
            await conn.execute(insert(VideoCheck), checks[start : start + 2000])
    return ids


async def streamings_by_id(engine: AsyncEngine) -> dict[int, Mapping[str, Any]]:
    """Every platform row with its check's bookkeeping (the defaults where it has none)."""
    async with engine.connect() as conn:
        platform = {
            row.id: dict(row._mapping) for row in await conn.execute(select(Streaming.__table__))
        }
        checks = {
            int(row.streaming_id): dict(row._mapping)
            for row in await conn.execute(select(VideoCheck.__table__))
        }
    rows: dict[int, Mapping[str, Any]] = {}
    for row_id, row in platform.items():
        check = checks.get(row_id, {})
        rows[row_id] = {**row, **{k: check.get(k, v) for k, v in CHECK_DEFAULTS.items()}}
    return rows


async def migrate(url: str) -> None:
    async with migrated_engine(url):
        pass
