"""Alembic environment: run by ``alianza-jobs db upgrade`` (see ``alianza_jobs.db.migrate``).

``migrate.py`` hands us a connection already inside its transaction (and, on Postgres, holding the
migration advisory lock), through ``config.attributes["connection"]``. Without one (someone running
the ``alembic`` command with their own ini), we open the database from the settings ourselves.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from alianza_jobs.db.migrate import VERSION_TABLE, include_name
from alianza_jobs.db.models import metadata
from alianza_jobs.db.types import UTCDateTime

config = context.config


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations spell out plain SQLAlchemy types: a migration must not change meaning when the
    # application's Python types change later.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # The platform's tables share the database: they are not ours to create, alter or drop,
        # and autogenerate must not propose to drop them for being absent from our models.
        include_name=include_name,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
    )


def run_with(connection: Connection) -> None:
    configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    from alianza_jobs.settings import load_settings

    return config.get_main_option("sqlalchemy.url") or load_settings().database_url


async def run_from_settings() -> None:
    from alianza_jobs.db.engine import create_engine

    engine = create_engine(database_url())
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_with)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=database_url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    run_with(shared)
else:
    asyncio.run(run_from_settings())
