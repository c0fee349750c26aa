"""Alembic migrations, shipped inside the package and run from Python (``alianza-jobs db ...``).

A new migration: change ``models.py``, upgrade a scratch database to head, then
``alianza-jobs db revision "what changed"`` writes ``versions/NNNN_what_changed.py``. ``upgrade``
is idempotent and safe on every start: docs/platform.md, "alianza_jobs.db.migrate".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import metadata

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Not Alembic's default `alembic_version`: the platform may keep its own Alembic history there.
VERSION_TABLE = "alianza_jobs_version"
# pg_advisory_xact_lock key: any constant nobody else uses; this is "alianzaM" as a big-endian int64.
_PG_MIGRATION_LOCK = int.from_bytes(b"alianzaM", "big") - 2**63


class MigrationError(RuntimeError):
    """The migration ran but left the database inconsistent (it was rolled back)."""


@dataclass(frozen=True)
class MigrationResult:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Only the jobs' own tables: the platform's share the database but are not ours to create,
    alter or drop, and autogenerate must not propose dropping them for being absent here."""
    return type_ != "table" or name in metadata.tables


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(
    engine: AsyncEngine, revision: str = "head", *, schema: str | None = None
) -> MigrationResult:
    """Bring the jobs' tables to ``revision`` (default: the newest); a no-op when they are there
    already. ``schema``: the Postgres schema they live in (``ALIANZA_DB_SCHEMA``), created if
    absent; the engine must put it first on its search path (``create_engine(jobs_schema=)``)."""
    return await _migrate(engine, lambda config: command.upgrade(config, revision), schema)


async def downgrade(engine: AsyncEngine, revision: str) -> MigrationResult:
    """Take the schema back to ``revision`` (``base``: no tables at all). Destroys data."""
    return await _migrate(engine, lambda config: command.downgrade(config, revision))


async def new_revision(engine: AsyncEngine, message: str, *, autogenerate: bool = True) -> Path:
    """Write the next migration file, numbered after the head; returns its path.

    With ``autogenerate`` it holds what the models have that the database (which must be at head)
    lacks. Read it before committing: autogenerate misses renames and data changes, and spells
    server defaults in the dialect it compared against (turn ``sa.text('now()')`` into
    ``sa.func.now()`` so the migration runs on both backends).
    """

    def write(connection: Connection) -> Path:
        config = alembic_config(connection)
        head = ScriptDirectory.from_config(config).get_current_head()
        rev_id = f"{int(head) + 1:04d}" if head and head.isdigit() else None
        script = command.revision(config, message=message, autogenerate=autogenerate, rev_id=rev_id)
        if script is None or isinstance(script, list):  # one config, one head: one script
            raise MigrationError(f"alembic wrote {script!r}, expected one migration")
        return Path(script.path)

    async with engine.connect() as conn:
        return await conn.run_sync(write)


async def schema_differences(engine: AsyncEngine, target: MetaData = metadata) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match ``target``."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_name": include_name,
            },
        )
        return list(compare_metadata(context, target))

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


async def _migrate(
    engine: AsyncEngine, run: Callable[[Config], None], schema: str | None = None
) -> MigrationResult:
    def migrate(connection: Connection) -> MigrationResult:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            if schema:
                # A plain name (settings checked it), so quoting cannot be got wrong here.
                connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        before = _current(connection)
        run(alembic_config(connection))
        if connection.dialect.name == "sqlite":
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise MigrationError(f"foreign key violations after migrating: {violations[:5]}")
        return MigrationResult(before, _current(connection))

    target = _sqlite_migration_engine(engine) if engine.dialect.name == "sqlite" else engine
    try:
        async with target.begin() as conn:
            return await conn.run_sync(migrate)
    finally:
        if target is not engine:
            await target.dispose()


def _sqlite_migration_engine(engine: AsyncEngine) -> AsyncEngine:
    """A one-connection engine on the same file with foreign keys off.

    Alembic's batch mode changes a SQLite table by copying it and dropping the original; with
    foreign keys on, that DROP would fire ``ON DELETE CASCADE`` and empty the referencing tables
    (dropping ``users`` would delete every session). Alembic's docs say to turn them off while
    migrating; ``PRAGMA foreign_key_check`` afterwards rolls back a migration that broke them.
    """
    migration_engine = create_engine(
        engine.url.render_as_string(hide_password=False), poolclass=NullPool
    )

    @event.listens_for(migration_engine.sync_engine, "connect")
    def _foreign_keys_off(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = OFF")
        finally:
            cursor.close()

    return migration_engine


__all__ = [
    "MIGRATIONS_DIR",
    "MigrationError",
    "MigrationResult",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "new_revision",
    "schema_differences",
    "upgrade",
]
