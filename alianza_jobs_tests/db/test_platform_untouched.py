"""A day of jobs on a platform database made by Drizzle: the jobs do their work through the schema
map, and afterwards the platform's tables are exactly as they were (columns, types, defaults,
constraints, enums, indexes), compared through ``information_schema``, ``pg_enum`` and
``pg_indexes``. Only their rows changed, and only in the columns the TypeScript package wrote.

The jobs run through the real code location (``build_defs`` on the settings a deployment would
have: ``DATABASE_URL``, ``ALIANZA_SCHEMA_MAP``), with Stream and Resend emulated in process.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner

from alianza_jobs.cli import cli
from alianza_jobs.definitions import build_defs
from alianza_jobs.emulators import ResendEmulator, StreamEmulator, VideoSpec
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.db.helpers import DRIZZLE_SCHEMA_MAP, create_drizzle_platform_schema

PLATFORM_TABLES = ("users", "user_sessions", "streamings", "email_queue")
READY_UID = "a" * 32
ERROR_UID = "b" * 32


def snapshot(url: str) -> dict[str, Any]:
    """Everything about the platform's tables that a schema change would alter."""
    tables = list(PLATFORM_TABLES)
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, ordinal_position, data_type, udt_name, is_nullable, "
            "column_default, character_maximum_length FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = ANY(%s) "
            "ORDER BY table_name, ordinal_position",
            (tables,),
        ).fetchall()
        constraints = conn.execute(
            "SELECT tc.table_name, tc.constraint_name, tc.constraint_type, "
            "pg_get_constraintdef(c.oid) FROM information_schema.table_constraints tc "
            "JOIN pg_constraint c ON c.conname = tc.constraint_name "
            "WHERE tc.table_schema = 'public' AND tc.table_name = ANY(%s) "
            "ORDER BY tc.table_name, tc.constraint_name",
            (tables,),
        ).fetchall()
        enums = conn.execute(
            "SELECT t.typname, e.enumlabel, e.enumsortorder FROM pg_enum e "
            "JOIN pg_type t ON t.oid = e.enumtypid ORDER BY t.typname, e.enumsortorder"
        ).fetchall()
        indexes = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' AND tablename = ANY(%s) ORDER BY tablename, indexname",
            (tables,),
        ).fetchall()
        triggers = conn.execute(
            "SELECT event_object_table, trigger_name FROM information_schema.triggers "
            "WHERE event_object_table = ANY(%s)",
            (tables,),
        ).fetchall()
    return {
        "columns": columns,
        "constraints": constraints,
        "enums": enums,
        "indexes": indexes,
        "triggers": triggers,
    }


def seed_platform(url: str) -> dict[str, Any]:
    """Rows as the platform's services would write them (Drizzle's defaults fill the rest)."""
    now = datetime.now(UTC).replace(tzinfo=None)  # the columns are timestamp without time zone
    with psycopg.connect(url) as conn:
        alive, gone = (
            conn.execute(
                "INSERT INTO users (email, name, deleted_at) VALUES (%s, %s, %s) RETURNING id",
                (email, name, deleted),
            ).fetchone()[0]  # type: ignore[index]
            for email, name, deleted in (
                ("ana@example.com", "Ana", None),
                ("bo@example.com", "Bo", now - timedelta(days=1)),
            )
        )
        for token, user, expires in (
            ("expired", alive, now - timedelta(hours=1)),
            ("live", alive, now + timedelta(days=1)),
            ("of-deleted-user", gone, now + timedelta(days=1)),
        ):
            conn.execute(
                "INSERT INTO user_sessions (user_id, token, expires_at) VALUES (%s, %s, %s)",
                (user, token, expires),
            )
        videos = {
            uid: conn.execute(
                "INSERT INTO streamings (user_id, title, external_id) VALUES (%s, %s, %s) "
                "RETURNING id",
                (alive, f"video {uid[:4]}", uid),
            ).fetchone()[0]  # type: ignore[index]
            for uid in (READY_UID, ERROR_UID)
        }
        emails = {
            to: conn.execute(
                'INSERT INTO email_queue ("to", subject, text) VALUES (%s, %s, %s) RETURNING id',
                (to, "Hola", "hola"),
            ).fetchone()[0]  # type: ignore[index]
            for to in ("ana@example.com", "not-an-address")
        }
    return {"videos": videos, "emails": emails}


def test_a_day_of_jobs_leaves_the_drizzle_schema_as_it_was(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    create_drizzle_platform_schema(postgres_url)
    ids = seed_platform(postgres_url)
    before = snapshot(postgres_url)

    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("ALIANZA_SCHEMA_MAP", str(DRIZZLE_SCHEMA_MAP))
    monkeypatch.setenv("ALERT_EMAIL_TO", "ops@example.com")
    monkeypatch.setenv("REPORTS_DIR", str(tmp_path / "reports"))
    runner = CliRunner()
    for command in (["db", "upgrade"], ["db", "check"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, result.output

    settings = load_settings()
    stream = StreamEmulator(settings.emulator_state_dir)
    done = {"started": datetime.now(UTC) - timedelta(hours=1), "final_after_s": 1.0}
    stream.add_videos(
        [
            VideoSpec(uid=READY_UID, outcome="ready", duration=12.5, **done),
            VideoSpec(uid=ERROR_UID, outcome="error", error_reason_code="ERR_NON_VIDEO", **done),
        ]
    )
    defs = build_defs(settings)
    instance = dg.DagsterInstance.get()
    today = datetime.now(UTC).date()
    for name, kwargs in (
        ("process_streaming_video_queue", {}),
        ("process_email_queue", {}),
        ("cleanup_expired_sessions", {}),
        ("daily_report", {"partition_key": (today - timedelta(days=1)).isoformat()}),
        (
            "replay_dead_letters",
            {"run_config": {"ops": {"requeue_dead_letters": {"config": {"source": "streamings"}}}}},
        ),
    ):
        result = defs.resolve_job_def(name).execute_in_process(instance=instance, **kwargs)
        assert result.success, name

    assert snapshot(postgres_url) == before

    with psycopg.connect(postgres_url) as conn:
        videos = dict(
            conn.execute(
                "SELECT external_id, status::text || ' ' || coalesce(duration, '') FROM streamings"
            ).fetchall()
        )
        emails = dict(conn.execute('SELECT "to", status::text FROM email_queue').fetchall())
        sessions = [r[0] for r in conn.execute("SELECT token FROM user_sessions").fetchall()]
        sent_at = conn.execute(
            "SELECT sent_at FROM email_queue WHERE \"to\" = 'ana@example.com'"
        ).fetchone()
        error = conn.execute(
            "SELECT error FROM email_queue WHERE \"to\" = 'not-an-address'"
        ).fetchone()
    assert videos == {READY_UID: "ready 12.5", ERROR_UID: "error "}
    # The daily report's notification joined the queue after the email run: still pending.
    assert emails["ana@example.com"] == "sent" and emails["not-an-address"] == "failed"
    assert emails["ops@example.com"] == "pending"
    assert sent_at is not None and sent_at[0] is not None and sent_at[0].tzinfo is None
    assert error is not None and "invalid" in error[0]
    assert sessions == ["live"]
    [delivered] = ResendEmulator(settings.emulator_state_dir).inbox()
    assert delivered.to == ["ana@example.com"]
    assert ids["emails"]["ana@example.com"] is not None
