"""The code location loads, validates, and declares exactly the jobs, crons and limits DESIGN fixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DefaultScheduleStatus, DefaultSensorStatus, Definitions

from alianza_jobs.platform.tags import MAX_RUNTIME_TAG, TAG_TIMEOUT

REPO = Path(__file__).resolve().parents[1]

# The jobs' table: job -> (cron or None, timeout s, max retries)
EXPECTED = {
    "process_streaming_video_queue": ("*/5 * * * *", 120, 3),
    "process_email_queue": ("* * * * *", 60, 3),
    "health_check": ("* * * * *", 30, 0),
    "sync_stream_catalog": ("*/15 * * * *", 600, 3),
    "cleanup_expired_sessions": ("0 2 * * *", 1800, 1),
    "daily_report": ("0 2 * * *", 1800, 3),
    "replay_dead_letters": (None, 300, 0),
    # Launched by its sensor when the receiver has stored deliveries; no cron of its own.
    "apply_stream_webhooks": (None, 60, 3),
}


def _load() -> Definitions:
    import importlib

    import alianza_jobs.definitions as module

    return importlib.reload(module).defs


def test_every_job_schedule_and_cron() -> None:
    defs = _load()
    jobs = {j.name: j for j in defs.resolve_all_job_defs() if not j.name.startswith("__")}
    assert set(jobs) == set(EXPECTED)
    schedules = {
        s.job_name: s for s in (defs.resolve_schedule_def(x.name) for x in defs.schedules or [])
    }
    for name, (cron, timeout, retries) in EXPECTED.items():
        job = jobs[name]
        [node] = job.graph.node_defs
        assert node.tags[TAG_TIMEOUT] == str(timeout), name
        policy = node.retry_policy
        assert (policy.max_retries if policy else 0) == retries, name
        assert int(job.run_tags[MAX_RUNTIME_TAG]) >= timeout * (retries + 1), name
        if cron is None:
            assert name not in schedules
            continue
        schedule = schedules[name]
        assert schedule.cron_schedule == cron, name
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert jobs["daily_report"].partitions_def is not None


def test_assets_lineage_and_sensors() -> None:
    defs = _load()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"streamings", "email_queue", "user_sessions", "stream_videos", "daily_reports"} <= keys
    from dagster import AssetKey

    parents = {k.to_user_string() for k in graph.get(AssetKey("daily_reports")).parent_keys}
    assert {"streamings", "email_queue", "user_sessions", "stream_videos"} <= parents
    sensors = {s.name: s for s in defs.sensors or []}
    assert set(sensors) >= {
        "alert_on_run_failure",
        "notify_on_recovery",
        "alert_on_stale_tables",
        "queue_work_sensor",
    }
    assert all(s.default_status == DefaultSensorStatus.RUNNING for s in sensors.values())
    work = sensors["queue_work_sensor"]
    assert {j.name for j in work.jobs} == {"process_email_queue", "apply_stream_webhooks"}
    assert work.minimum_interval_seconds == 5


def test_cron_only_mode_has_no_work_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """ALIANZA_EVENT_TRIGGERS=false: the TypeScript package's way, every tick runs."""
    monkeypatch.setenv("ALIANZA_EVENT_TRIGGERS", "false")
    defs = _load()
    sensors = {s.name for s in defs.sensors or []}
    assert sensors == {"alert_on_run_failure", "notify_on_recovery", "alert_on_stale_tables"}
    monkeypatch.delenv("ALIANZA_EVENT_TRIGGERS")
    _load()


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dagster_definitions_validate_passes() -> None:
    proc = _run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"], {}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "All code locations passed validation" in proc.stdout + proc.stderr


@pytest.mark.parametrize(("env", "cron"), [("dev", "*/10 * * * *"), ("uat", "*/15 * * * *")])
def test_environment_crons_like_wrangler(env: str, cron: str) -> None:
    secrets = {
        "ALIANZA_ENV": env,
        "DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/none",
        "CLOUDFLARE_ACCOUNT_ID": "acc",
        "CLOUDFLARE_STREAM_API_TOKEN": "token-value",
        "RESEND_API_KEY": "re_key_value",
        "EMAIL_FROM": "jobs@alianza.example",
    }
    proc = _run([sys.executable, "-m", "alianza_jobs.cli", "jobs", "--json"], secrets)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert rows["process_streaming_video_queue"]["cron"] == cron
    assert rows["process_email_queue"]["cron"] == "* * * * *"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"ALIANZA_ENV": "staging"}, "ALIANZA_ENV='staging' is not one of local, dev, uat, prod"),
        (
            {"ALIANZA_CRON_HEALTH_CHECK": "every minute"},
            "ALIANZA_CRON_HEALTH_CHECK='every minute' is not a valid cron expression",
        ),
        (
            {"DATABASE_URL": "postgres//app:hunter2@db/app"},
            "DATABASE_URL='postgres//app:***@db/app' is not a valid database URL",
        ),
        ({"ALIANZA_ENV": "prod"}, "must be set when ALIANZA_ENV=prod (missing)"),
    ],
)
def test_bad_settings_fail_the_load_naming_the_variable(env: dict[str, str], line: str) -> None:
    proc = _run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"], env
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert line in output
    assert "hunter2" not in output
