"""Fixtures for the data-layer tests: each runs on SQLite and on the real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs_tests.db.helpers import migrated_engine


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A fresh database (SQLite file or new Postgres database) migrated to head."""
    async with migrated_engine(database_url) as engine:
        yield engine
