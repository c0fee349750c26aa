"""The alert sensors' shared fixture: a migrated app database (alerts go out through its queue)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alianza_jobs_tests.db.helpers import migrated_engine


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"

    async def migrate() -> None:
        async with migrated_engine(url):
            pass

    asyncio.run(migrate())
    return url
