"""Session cleanup: ``cleanup_expired_sessions`` against the TypeScript package's load-all, delete-one-by-one loop.

The table: ``expired`` sessions (expired between a minute and 30 days ago) and 50,000 live ones
(expiring one to 30 days from now), over 2,000 users of whom every 50th is soft-deleted. No API.

End state: no expired session left, every live session of a live user kept. Ours also deletes the
live sessions of soft-deleted users (a deleted account must not stay logged in); the TypeScript package keeps
them. Rows per second counts every session the run deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.platform_models import User, UserSession
from benchmarks.harness import EmulatorServer, PlatformSchema
from benchmarks.workloads.base import Case, QueueWorkload, Target
from benchmarks.workloads.summary import find

USERS = 2_000
DELETED_EVERY = 50  # users 0, 50, 100, ... are soft-deleted
CHUNK = 5_000
MINUTE = timedelta(minutes=1)


class SessionCleanup(QueueWorkload):
    name = "session_cleanup"
    title = "Session cleanup"
    job = "cleanup_expired_sessions"
    data = (
        "Expired sessions (size) plus 50,000 live ones over 2,000 users, every 50th soft-deleted. "
        "Ours also deletes the live sessions of soft-deleted users (1,000; counted in its rows)."
    )

    def cases(self, smoke: bool) -> list[Case]:
        if smoke:
            return [Case("baseline", 50), Case("ours", 300)]
        return [Case("baseline", 5_000), Case("ours", 200_000)]

    @staticmethod
    def live(smoke: bool) -> int:
        return 100 if smoke else 50_000

    async def populate(
        self, engine: AsyncEngine, size: int, smoke: bool, schema: PlatformSchema
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        users = [
            {
                "email": f"user{u}@example.com",
                "name": f"User {u}",
                "created_at": now - timedelta(days=400),
                "updated_at": now - timedelta(days=400),
                "deleted_at": now - timedelta(days=3) if u % DELETED_EVERY == 0 else None,
            }
            for u in range(USERS)
        ]
        async with engine.begin() as conn:
            result = await conn.execute(
                insert(User).returning(User.id, sort_by_parameter_order=True), users
            )
            user_ids = list(result.scalars())
        live = self.live(smoke)
        live_of_deleted = 0
        rows: list[dict[str, Any]] = []
        async with engine.begin() as conn:
            for i in range(size + live):
                expired = i < size
                user = i % USERS
                # Spread over a month either side of now, never within a minute of it.
                offset = MINUTE * (1 + (i * 7919) % (30 * 24 * 60))
                expires = now - offset if expired else now + timedelta(days=1) + offset
                if not expired and user % DELETED_EVERY == 0:
                    live_of_deleted += 1
                rows.append(
                    {
                        "user_id": user_ids[user],
                        "token_hash": hashlib.sha256(f"{size}:{i}".encode()).hexdigest(),
                        "expires_at": expires,
                        "created_at": expires - timedelta(days=30),
                        "updated_at": expires - timedelta(days=30),
                    }
                )
                if len(rows) == CHUNK:
                    await conn.execute(insert(UserSession), rows)
                    rows = []
            if rows:
                await conn.execute(insert(UserSession), rows)
        return {"expired": size, "live": live, "live_of_deleted_users": live_of_deleted}

    def rows(self, case: Case, expected: Mapping[str, Any]) -> int:
        if case.impl == "ours":
            return int(expected["expired"]) + int(expected["live_of_deleted_users"])
        return int(expected["expired"])

    def verify(
        self,
        database_url: str,
        server: EmulatorServer | None,
        case: Case,
        expected: Mapping[str, Any],
        counters: Mapping[str, Any],
        schema: PlatformSchema,
    ) -> dict[str, Any]:
        left, expired_left, of_deleted_left = asyncio.run(_end_state(database_url))
        assert expired_left == 0, f"{expired_left} expired sessions left"
        if case.impl == "ours":
            want = int(expected["live"]) - int(expected["live_of_deleted_users"])
            assert of_deleted_left == 0, f"{of_deleted_left} sessions of deleted users left"
            assert counters.get("expired_deleted") == expected["expired"], counters
        else:
            want = int(expected["live"])
        assert left == want, f"{left} sessions left, expected {want}"
        return {"sessions_left": left}

    def targets(self, backend: str, summaries: Sequence[Mapping[str, Any]]) -> list[Target]:
        ours = find(summaries, "ours")
        return [
            Target(
                "session cleanup: rows per second vs baseline",
                backend,
                ours.get("ratio_to_baseline") if ours else None,
                20.0,
                ">=",
                "x",
            )
        ]


async def _end_state(url: str) -> tuple[int, int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            left = await conn.scalar(select(func.count()).select_from(UserSession))
            expired = await conn.scalar(
                select(func.count())
                .select_from(UserSession)
                .where(UserSession.expires_at <= datetime.now(UTC))
            )
            of_deleted = await conn.scalar(
                select(func.count())
                .select_from(UserSession)
                .join(User, User.id == UserSession.user_id)
                .where(User.deleted_at.is_not(None))
            )
        return int(left or 0), int(expired or 0), int(of_deleted or 0)
    finally:
        await engine.dispose()
