"""Secrets: every job run with sentinel secret values; then the whole event log, stdout, stderr, the
instance's files, the pushed metrics and the app database are searched for them: zero hits.

The secrets are really used: the emulators require exactly the sentinel token and key (stored as
digests), the database URL carries a sentinel password (Postgres here trusts loopback and ignores
it), the alert webhook URL is a sentinel (a dead port: its failure path runs too). Failure paths
run as well: a revoked token (401), a database that refuses the connection, a webhook that is down.
The web UI binds to loopback by default (``make dev`` passes ``-h 127.0.0.1``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
from dagster import DagsterInstance
from dagster._serdes import serialize_value
from sqlalchemy import String, Text, select

from alianza_jobs.db.demo import seed_demo
from alianza_jobs.db.models import metadata
from alianza_jobs.db.platform_models import platform_metadata
from alianza_jobs.redaction import redact, secret_values
from alianza_jobs.settings import mask_url
from alianza_jobs_tests.processes import free_port
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import (
    CLI,
    REPO,
    Namespace,
    child_env,
    run_async,
    run_config_file,
    seed_emails,
    seed_videos,
    with_engine,
)

STREAM_TOKEN = "cf-SENTINEL-stream-token-7f3a9c"
RESEND_KEY = "re_SENTINEL_resend_key_51d0e2"
DB_PASSWORD = "SENTINEL-db-pass-c84b11"
WEBHOOK_SECRET = "whsec_SENTINEL_webhook_e0f9aa"
PG_PASSWORD = "SENTINEL-dagster-pg-90bd4f"
HOOK_TOKEN = "SENTINELhooktoken3310"
# What must appear nowhere: each secret's distinctive part (a secret split by a formatter still
# leaves its tail behind).
NEEDLES = ("SENTINEL", "7f3a9c", "51d0e2", "c84b11", "e0f9aa", "90bd4f", "hooktoken3310")
JOBS = (
    "process_streaming_video_queue",
    "process_email_queue",
    "health_check",
    "sync_stream_catalog",
    "cleanup_expired_sessions",
    "daily_report",
)


def _env(db_url: str, ns: Namespace, pushgateway: str, webhook_port: int) -> dict[str, str]:
    user_db = db_url.removeprefix("postgresql://postgres@")
    return {
        "ALIANZA_ENV": "prod",
        "DATABASE_URL": f"postgresql://postgres:{DB_PASSWORD}@{user_db}",
        "CLOUDFLARE_ACCOUNT_ID": "5ec2e7000000000000000000000000aa",
        "CLOUDFLARE_STREAM_API_TOKEN": STREAM_TOKEN,
        "CLOUDFLARE_API_BASE_URL": ns.stream_base_url,
        "CLOUDFLARE_STREAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RESEND_API_KEY": RESEND_KEY,
        "RESEND_API_BASE_URL": ns.resend_base_url,
        "EMAIL_FROM": "Alianza <jobs@alianza.test>",
        "ALERT_EMAIL_TO": "oncall@alianza.test",
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/hooks/{HOOK_TOKEN}",
        "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        "METRICS_ENABLED": "true",
        "PROMETHEUS_PUSHGATEWAY_URL": pushgateway,
        "LOG_LEVEL": "debug",
    }


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        cwd=REPO,
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wave(runs: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, tuple[int, str, str]]:
    procs = {name: _spawn(args, env) for name, (args, env) in runs.items()}
    return {name: (p.wait(timeout=180), *p.communicate(timeout=10)) for name, p in procs.items()}


async def _app_database_text(url: str) -> str:
    """Every text column of every table: errors, dead letters, breaker state, reports, and the
    platform's (stand-in) tables the jobs write to (an email's ``last_error``)."""

    async def dump(engine: Any) -> str:
        chunks = []
        async with engine.connect() as conn:
            for table in [*metadata.sorted_tables, *platform_metadata.sorted_tables]:
                columns = [c for c in table.columns if isinstance(c.type, String | Text)]
                json_columns = [c for c in table.columns if "JSON" in type(c.type).__name__]
                if not columns and not json_columns:
                    continue
                for row in await conn.execute(select(*columns, *json_columns)):
                    chunks.append(repr(tuple(row)))
        return "\n".join(chunks)

    return await with_engine(url, dump)


def test_no_secret_leaks_from_any_job(
    pg_url: str,
    emulators: Namespace,
    pushgateway: str,
    dagster_home: Path,
    tmp_path: Path,
    outcome: Outcomes,
) -> None:
    emulators.control.update_config(
        {"stream": {"require_token": STREAM_TOKEN}, "resend": {"require_key": RESEND_KEY}}
    )
    run_async(seed_videos(pg_url, emulators.stream, "secrets", ready=5))
    run_async(seed_emails(pg_url, "secrets", valid=10, invalid=3))

    async def people(engine: Any) -> None:
        await seed_demo(engine, users=10, sessions=40, videos=0, emails=0)

    run_async(with_engine(pg_url, people))
    env = _env(pg_url, emulators, pushgateway, webhook_port=free_port())
    DagsterInstance.get()  # the instance's storage exists before the runs race to create it
    replay = run_config_file(tmp_path, "requeue_dead_letters", {"source": "email_queue"})

    first = {job: (["run", job, "--json"], env) for job in JOBS}
    results = _wave({"db upgrade": (["db", "upgrade"], env), **first})
    # The failure paths: a revoked token, a database refusing connections, and the replay of
    # what the email run dead-lettered.
    emulators.stream.configure(revoke_token=STREAM_TOKEN)
    bad_db = {**env, "DATABASE_URL": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:1/nodb"}
    results |= _wave(
        {
            "replay_dead_letters": (["run", "replay_dead_letters", "--config", str(replay)], env),
            "revoked token": (["run", "process_streaming_video_queue", "--json"], env),
            # (health_check: no retries, and its database probe reports the failure itself)
            "database down": (["run", "health_check", "--json"], bad_db),
            "trigger": (["trigger", "--cron", "* * * * *", "--json"], env),
        }
    )
    for job in ("db upgrade", *JOBS, "replay_dead_letters"):
        code, _, stderr = results[job]
        assert code == 0, f"{job}: {stderr[-2000:]}"
    assert results["revoked token"][0] == 1 and results["database down"][0] == 1

    instance = DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) >= len(JOBS) + 4
    haystacks: dict[str, str] = {}
    for name, (_, stdout, stderr) in results.items():
        haystacks[f"{name} stdout"] = stdout
        haystacks[f"{name} stderr"] = stderr
    for run in runs:
        records = instance.all_logs(run.run_id)
        haystacks[f"event log of {run.job_name} {run.run_id}"] = "\n".join(
            serialize_value(r) for r in records
        )
        haystacks[f"run {run.run_id}"] = serialize_value(run)
    for path in dagster_home.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes().decode("utf-8", "replace")
    haystacks["pushgateway"] = httpx.get(f"{pushgateway}/metrics", timeout=5).text
    haystacks["app database"] = run_async(_app_database_text(pg_url))
    haystacks["emulator state and log"] = "\n".join(
        p.read_bytes().decode("utf-8", "replace")
        for p in emulators.state_dir.parent.glob(f"{emulators.name}/**/*")
        if p.is_file()
    )
    hits = [
        f"{needle!r} in {where}"
        for where, text in haystacks.items()
        for needle in NEEDLES
        if needle in text
    ]
    outcome.add(
        "secrets",
        f"sentinel secrets through every job ({len(runs)} runs, success and failure paths): "
        "event log, stdout, stderr, instance files, metrics, app database",
        runs=len(runs),
        items=len(haystacks),
        lost=len(hits),
    )
    assert not hits, hits[:20]
    # The searches were not vacuous: the runs did log, push metrics, and write the database.
    assert "alianza_task_items" in haystacks["pushgateway"]
    assert "Cron job execution completed" in haystacks["process_email_queue stderr"]
    assert "***" in results["revoked token"][2] or "401" in results["revoked token"][2]


def test_redaction_copes_with_a_malformed_database_url(outcome: Outcomes) -> None:
    """A URL whose port is not a number still has its password found and masked (it used to
    raise from inside the logger's redaction)."""
    url = f"postgresql://app:{DB_PASSWORD}@db.internal:five432/app"
    found = secret_values({"DATABASE_URL": url})
    masked = redact(f"connecting to {url}", found)
    outcome.add("secrets", "password of a malformed DATABASE_URL", runs=0, items=2, lost=0)
    assert found == [DB_PASSWORD]
    assert DB_PASSWORD not in masked and DB_PASSWORD not in mask_url(url)


def test_the_web_ui_binds_to_loopback_by_default(outcome: Outcomes) -> None:
    """``make dev`` starts ``dg dev -h 127.0.0.1`` (through ``scripts/dev``) and the webhook
    receiver on 127.0.0.1: the UI (which has no login of its own) and the receiver are not
    reachable from the network unless an operator says so."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    dry = subprocess.run(
        ["make", "-n", "dev"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    [command] = [line for line in dry.stdout.splitlines() if "scripts/dev" in line]
    script = (REPO / "scripts" / "dev").read_text()
    outcome.add("secrets", "web UI bound to 127.0.0.1 by default", runs=0, items=2, lost=0)
    assert " HOST=127.0.0.1 " in f" {command} "
    assert 'dg" dev -w "$REPO/workspace.yaml" -h "$HOST"' in script
    assert "webhooks serve --host 127.0.0.1 " in script
