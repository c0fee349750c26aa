"""The deployment runs on its own: a schedule fires, runs land in Postgres, GraphQL launches work,
``alianza-jobs doctor`` agrees, and no secret reaches a file, a log or Dagster's storage."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from alianza_jobs.cli.doctor import CHECKS
from alianza_jobs_tests.e2e.conftest import DAGSTER_PG_PASSWORD, RESEND_KEY, STREAM_TOKEN
from alianza_jobs_tests.e2e.harness import Deployment, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

JOB = "cleanup_expired_sessions"
SCHEDULE = f"{JOB}_schedule"


def _scheduled_success(deployment: Deployment) -> str | None:
    """The run id of a tick of SCHEDULE whose run succeeded; fails at once if one failed.

    A run whose launch a daemon crash test cut short never starts, and run monitoring fails it
    (the crash tests' business); one that started and failed is this test's failure."""
    for tick in deployment.ticks(SCHEDULE):
        assert tick["status"] != "FAILURE", f"tick failed: {tick}"
        for run_id in tick["run_ids"]:
            record = deployment.run_record(run_id)
            status = record.dagster_run.status
            assert status is not DagsterRunStatus.FAILURE or record.start_time is None, (
                f"scheduled run {run_id} failed:\n" + _run_errors(deployment, run_id)
            )
            if status is DagsterRunStatus.SUCCESS:
                return str(run_id)
    return None


def _run_errors(deployment: Deployment, run_id: str) -> str:
    return "\n".join(
        message[:2000]
        for kind, message in deployment.run_events(run_id)
        if "FAILURE" in (kind or "")
    )


def test_a_minutely_schedule_fires_on_its_own_and_its_run_is_in_postgres(
    deployment: Deployment,
) -> None:
    run_id = wait_for(
        f"a tick of {SCHEDULE} (* * * * *) whose run succeeds",
        lambda: _scheduled_success(deployment),
        timeout=200,
        interval=2,
    )

    # Read back from Postgres itself, not through Dagster: this is what survives the processes.
    [(job, status)] = deployment.dagster_sql(
        "SELECT pipeline_name, status FROM runs WHERE run_id = %s", [run_id]
    )
    assert (job, status) == (JOB, "SUCCESS")
    tags = dict(
        deployment.dagster_sql("SELECT key, value FROM run_tags WHERE run_id = %s", [run_id])
    )
    assert tags["dagster/schedule_name"] == SCHEDULE
    assert tags["alianza/cron"] == "* * * * *"
    assert tags["alianza/job"] == JOB

    events = deployment.run_events(run_id)
    kinds = [kind for kind, _ in events]
    assert kinds.count("PIPELINE_SUCCESS") == 1
    # Its logs: our structured lines, with the run's context bound, in the run's event log.
    messages = [message for kind, message in events if kind is None]
    assert any(f"Starting {JOB}" in m for m in messages), messages
    assert any("Cron job execution completed" in m for m in messages), messages
    # Its materialization of the table it maintains, as Postgres indexes it.
    materialized = deployment.dagster_sql(
        "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
        [run_id, "ASSET_MATERIALIZATION"],
    )
    assert materialized == [('["user_sessions"]',)]


def test_a_job_launched_through_graphql_runs_to_success(deployment: Deployment) -> None:
    run_id = deployment.launch(
        JOB,
        run_config={"ops": {"delete_expired_sessions": {"config": {"dry_run": True}}}},
        tags={"e2e/launched_by": "graphql"},
    )

    assert deployment.wait_for_run(run_id, timeout=180) is DagsterRunStatus.SUCCESS
    run = deployment.run_record(run_id).dagster_run
    assert run.tags["e2e/launched_by"] == "graphql"
    assert run.tags["alianza/job"] == JOB  # the job's own tags, which the queue limits by
    assert run.run_config["ops"]["delete_expired_sessions"]["config"]["dry_run"] is True
    kinds = {
        kind
        for (kind,) in deployment.dagster_sql(
            "SELECT dagster_event_type FROM event_logs WHERE run_id = %s", [run_id]
        )
    }
    # Through the queue, like every run in production, then started by the daemon.
    assert {"PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_SUCCESS"} <= kinds


def test_doctor_passes_against_the_running_deployment(deployment: Deployment) -> None:
    result = deployment.cli("doctor")
    print(f"\n{result.stdout}")

    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    checks = [line for line in lines if line.startswith(("ok", "FAIL"))]
    assert len(checks) == len(CHECKS) and all(line.startswith("ok") for line in checks), (
        result.stdout
    )
    assert "PostgresRunStorage" in result.stdout
    for secret in (DAGSTER_PG_PASSWORD, STREAM_TOKEN, RESEND_KEY):
        assert secret not in result.stdout + result.stderr


def test_no_secret_in_any_file_log_or_dagster_table(deployment: Deployment) -> None:
    # Let at least one run of each kind have written its files and events first.
    wait_for("a scheduled run", lambda: _scheduled_success(deployment), timeout=200, interval=2)
    secrets = (DAGSTER_PG_PASSWORD, STREAM_TOKEN, RESEND_KEY)

    leaks: list[str] = []
    for path in sorted(Path(deployment.root).rglob("*")):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            leaks += [f"{path}: {s[:10]}..." for s in secrets if s.encode() in content]
    for table, column in (
        ("event_logs", "event"),
        ("runs", "run_body"),
        ("run_tags", "value"),
        ("job_ticks", "tick_body"),
        ("instigators", "instigator_body"),
    ):
        for secret in secrets:
            [(count,)] = deployment.dagster_sql(
                f"SELECT count(*) FROM {table} WHERE {column} LIKE %s",  # noqa: S608 - fixed names
                [f"%{secret}%"],
            )
            if count:
                leaks.append(f"{table}.{column}: {count} row(s) with {secret[:10]}...")
    assert not leaks
