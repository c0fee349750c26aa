"""``alianza-jobs db``: migrate, check and seed the application database (``DATABASE_URL``).

``db upgrade`` is safe to run on every start (``make dev`` does): at head it changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db import migrate
from alianza_jobs.db.demo import has_users, seed_demo
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.platform_check import check_platform
from alianza_jobs.db.platform_models import create_stand_in
from alianza_jobs.db.schema_map import SHAPES, SchemaMapError, load_schema_map
from alianza_jobs.emulators import StreamEmulator, VideoSpec
from alianza_jobs.redaction import redact
from alianza_jobs.settings import Settings, SettingsError, load_settings, mask_url

T = TypeVar("T")


class _UsageError(click.ClickException):
    """Bad settings: a usage error, exit 2, one line (like the other commands)."""

    exit_code = 2


def _run(action: Callable[[AsyncEngine], Awaitable[T]]) -> tuple[T, str]:
    """Run ``action`` on an engine for ``DATABASE_URL``; returns its result and the masked URL."""
    settings = _settings()
    url = settings.database_url

    async def main() -> T:
        engine = create_engine(url, jobs_schema=settings.db_schema)
        try:
            return await action(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main()), mask_url(url)
    except SQLAlchemyError as exc:
        # The driver's first line says what failed (refused, auth, missing table); the rest is SQL.
        cause = getattr(exc, "orig", None) or exc
        first_line = str(cause).strip().splitlines()
        reason = first_line[0] if first_line else type(exc).__name__
        raise click.ClickException(f"{mask_url(url)}: {redact(reason)}") from None


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise _UsageError(str(exc)) from None


def _rev(revision: str | None) -> str:
    return revision or "base (empty)"


def _echo_migration(result: migrate.MigrationResult, url: str, verb: str) -> None:
    if result.changed:
        click.echo(f"{url}: {verb} {_rev(result.before)} -> {_rev(result.after)}")
    else:
        click.echo(f"{url}: already at {_rev(result.after)}, nothing to do")


@click.group("db")
def db_group() -> None:
    """Migrate and seed the application database (DATABASE_URL)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
def upgrade_command(revision: str) -> None:
    """Apply migrations up to REVISION (default: head). A no-op when already there."""
    schema = _settings().db_schema
    result, url = _run(lambda engine: migrate.upgrade(engine, revision, schema=schema))
    _echo_migration(result, url, "upgraded")


@db_group.command("platform-stand-in")
def platform_stand_in_command() -> None:
    """Create a local stand-in for the platform's tables (users, user_sessions, streamings,
    email_queue) where they do not exist. For local use: a platform database has its own, which
    this leaves exactly as they are."""
    created, url = _run(create_stand_in)
    if created:
        click.echo(f"{url}: created the platform stand-in's {', '.join(created)}")
    else:
        click.echo(f"{url}: the platform's tables exist already, nothing to do")


@db_group.command("downgrade")
@click.argument("revision")
def downgrade_command(revision: str) -> None:
    """Revert migrations down to REVISION ('base' drops every table of the jobs; the platform's
    stay). Destroys data."""
    result, url = _run(lambda engine: migrate.downgrade(engine, revision))
    _echo_migration(result, url, "downgraded")


@db_group.command("current")
def current_command() -> None:
    """Show the database's revision and the newest one this package ships."""
    current, url = _run(migrate.current_revision)
    head = migrate.head_revision()
    state = "up to date" if current == head else "behind: run `alianza-jobs db upgrade`"
    click.echo(f"{url}: at {_rev(current)}, head {_rev(head)} ({state})")


@db_group.command("check")
def check_command() -> None:
    """Compare the live database with what the jobs read and write there; exit 1 on a mismatch.

    One line per problem: a table or column that does not exist, or whose type cannot hold what
    the jobs write (an enum lacking a status, an integer duration). Nothing is written.
    """
    settings = _settings()
    try:
        schema_map = load_schema_map(settings.schema_map_path)
    except SchemaMapError as exc:
        raise _UsageError(str(exc)) from None
    schema = "public" if settings.db_schema else None
    problems, url = _run(lambda engine: check_platform(engine, schema_map, schema=schema))
    for problem in problems:
        click.echo(f"{url}: {problem}")
    if problems:
        raise SystemExit(1)
    click.echo(
        f"{url}: the platform tables hold what the jobs read and write ({len(SHAPES)} tables)"
    )


@db_group.command("revision")
@click.argument("message")
@click.option("--empty", is_flag=True, help="An empty migration instead of an autogenerated one.")
def revision_command(message: str, empty: bool) -> None:
    """Write the next migration from what the models add to the database (which must be at head)."""
    path, _ = _run(lambda engine: migrate.new_revision(engine, message, autogenerate=not empty))
    click.echo(f"wrote {path}: review it before committing")


@db_group.command("seed-demo")
@click.option("--users", default=50, show_default=True, type=click.IntRange(min=0))
@click.option("--sessions", default=200, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--expired-ratio",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the sessions that are already expired.",
)
@click.option("--videos", default=20, show_default=True, type=click.IntRange(min=0))
@click.option("--emails", default=30, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=42, show_default=True, help="Random seed (same seed, same data).")
@click.option("--if-empty", is_flag=True, help="Do nothing when the database already has users.")
def seed_demo_command(
    users: int,
    sessions: int,
    expired_ratio: float,
    videos: int,
    emails: int,
    seed: int,
    if_empty: bool,
) -> None:
    """Fill the database with demo users, sessions, queued videos and pending emails."""
    if users == 0 and (sessions or emails):
        raise _UsageError("--sessions and --emails need --users of at least 1")

    async def seed_it(engine: AsyncEngine) -> str | None:
        if migrate.head_revision() != await migrate.current_revision(engine):
            raise click.ClickException(
                "the database is not migrated: run `alianza-jobs db upgrade`"
            )
        await create_stand_in(engine)
        if if_empty and await has_users(engine):
            return None
        data = await seed_demo(
            engine,
            users=users,
            sessions=sessions,
            expired_ratio=expired_ratio,
            videos=videos,
            emails=emails,
            seed=seed,
        )
        settings = load_settings()
        if settings.stream_emulated and data.videos:
            # The same videos exist "in Stream", so the video queue has something to reconcile;
            # the emulator starts each one's processing now, so the UI shows them turn ready.
            emulator = StreamEmulator(settings.emulator_state_dir)
            await asyncio.to_thread(
                emulator.add_videos,
                [VideoSpec(uid=v.external_id, created=v.created_at) for v in data.videos],
                if_exists="keep",
            )
        return data.summary()

    summary, url = _run(seed_it)
    if summary is None:
        click.echo(f"{url}: already has users, not seeding (--if-empty)")
    else:
        click.echo(f"{url}: seeded {summary}")
