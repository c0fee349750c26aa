"""``alianza-jobs jobs | run | trigger`` against a temporary DAGSTER_HOME: runs land in its storage."""

from __future__ import annotations

from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

from alianza_jobs_tests.cli.helpers import json_lines, run_cli

M = ("-m", "alianza_jobs_tests.platform.defs")


def test_jobs_lists_crons_timeouts_and_retries() -> None:
    proc = run_cli(*M, "jobs")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["JOB", "CRON"]
    flaky = next(line for line in lines if line.startswith("flaky"))
    assert "*/7 * * * *" in flaky
    assert "3 retries, 0.1 s delay, exponential, jitter" in flaky
    hangs = next(line for line in lines if line.startswith("hangs"))
    assert "manual" in hangs
    assert "0.5 s" in hangs


def test_jobs_shows_the_environments_cron() -> None:
    proc = run_cli(*M, "jobs", "--json", env={"ALIANZA_CRON_COUNTS": "0 3 * * *"})
    rows = {row["name"]: row for row in json_lines(proc.stdout)}
    assert rows["counts"]["cron"] == "0 3 * * *"


def test_run_records_the_run_its_logs_and_metadata() -> None:
    proc = run_cli(*M, "run", "counts", "--json")
    assert proc.returncode == 0, proc.stderr
    result, summary = json_lines(proc.stdout)
    assert result["type"] == "job_result"
    assert result["job_name"] == "counts"
    assert result["success"] is True
    assert result["retry_count"] == 0
    assert result["error"] is None
    assert result["duration_ms"] > 0
    assert summary == {
        "type": "summary",
        "total_duration_ms": summary["total_duration_ms"],
        "total_jobs": 1,
        "success_count": 1,
        "failure_count": 0,
    }

    instance = DagsterInstance.get()
    run = instance.get_run_by_id(result["run_id"])
    assert run is not None
    assert run.status == DagsterRunStatus.SUCCESS
    assert run.tags["alianza/trigger"] == "cli"
    messages = [entry.user_message for entry in instance.all_logs(run.run_id)]
    assert any(m.startswith("Processed item  task=counts item_id=2") for m in messages)
    materialization = instance.get_latest_materialization_event(AssetKey("demo_table"))
    assert materialization is not None
    assert materialization.run_id == run.run_id
    meta = materialization.asset_materialization.metadata
    assert meta["processed"].value == 3


def test_trigger_runs_every_job_bound_to_the_cron() -> None:
    proc = run_cli(*M, "trigger", "--cron", "*/7 * * * *", "--json")
    assert proc.returncode == 0, proc.stderr
    *results, summary = json_lines(proc.stdout)
    assert sorted(r["job_name"] for r in results) == ["counts", "flaky"]
    flaky = next(r for r in results if r["job_name"] == "flaky")
    assert flaky["success"] is True
    assert flaky["retry_count"] == 2
    assert summary["total_jobs"] == 2
    assert summary["success_count"] == 2

    instance = DagsterInstance.get()
    for r in results:
        run = instance.get_run_by_id(r["run_id"])
        assert run is not None
        assert run.tags["alianza/cron"] == "*/7 * * * *"
        assert "alianza/scheduled_time" in run.tags
        retries = instance.get_records_for_run(
            r["run_id"], of_type=DagsterEventType.STEP_UP_FOR_RETRY
        ).records
        assert len(retries) == r["retry_count"]
    # The cron and scheduled time travel in every log line of those runs.
    messages = [e.user_message for e in instance.all_logs(flaky["run_id"])]
    assert any('cron="*/7 * * * *"' in m for m in messages)


def test_failure_exits_1_with_the_error() -> None:
    proc = run_cli(*M, "run", "hangs")
    assert proc.returncode == 1
    assert "FAIL hangs" in proc.stdout
    assert "error: TaskTimeoutError: hangs exceeded its 0.5 s timeout" in proc.stdout
    assert "0 succeeded, 1 failed" in proc.stdout


def test_usage_errors_exit_2_and_list_what_is_known() -> None:
    proc = run_cli(*M, "run", "nope")
    assert proc.returncode == 2
    assert "unknown job 'nope'; known jobs: counts, flaky, hangs, leaky, toggle" in proc.stderr

    proc = run_cli(*M, "trigger", "--cron", "0 0 * * *")
    assert proc.returncode == 2
    assert "no job is bound to cron '0 0 * * *'; crons in use: */7 * * * *" in proc.stderr


def test_bad_settings_exit_2_with_one_line() -> None:
    proc = run_cli(*M, "jobs", env={"ALIANZA_ENV": "staging"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "Error: ALIANZA_ENV='staging' is not one of local, dev, uat, prod"
    )
