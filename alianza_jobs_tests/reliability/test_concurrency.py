"""Concurrency: two runs of one job at once, and a manual run during a scheduled one.

The schedule guard skips a tick while a run of the job is in progress, but nothing stops an
operator's ``alianza-jobs run`` (nor a second scheduler, nor a run that outlived its monitor): the
leases are what keep an item from being processed twice. Both runs here are real ``alianza-jobs``
processes, held at a barrier just before their first statement so that their work truly overlaps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    SkipReason,
    build_schedule_context,
)

from alianza_jobs.platform.tags import TAG_CRON, TAG_TRIGGER
from alianza_jobs.resources import Database
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import (
    CRASHSITE,
    Namespace,
    app_env,
    audit_emails,
    audit_queue,
    run_async,
    run_config_file,
    seed_emails,
    seed_videos,
    spawn,
    wait_for,
)
from alianza_jobs_tests.reliability.hooks import BARRIER, BARRIER_MATCH

# Where two email runs wait for each other: the UPDATE that stamps their first claimed batch with
# its idempotency key and `sending` (the statement binding `p_idempotency_key`), after the claim
# committed. Released from there, each run holds a batch it will send, so both send some however
# the two processes are scheduled; held at their first statement, one could drain the queue
# before the other had claimed a row.
AFTER_FIRST_CLAIM = "p_idempotency_key"

JOBS = {
    "email": ("process_email_queue", "send_due_emails", {"batch_size": 20}),
    "video": (
        "process_streaming_video_queue",
        "check_queued_videos",
        {"page_size": 5, "lookup_batch_size": 2},
    ),
}


def materialized(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    """The counters a run reported (its materialization's metadata)."""
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    assert records, f"run {run_id} materialized nothing"
    event = records[-1].event_log_entry.dagster_event
    assert event is not None
    metadata = event.event_specific_data.materialization.metadata  # type: ignore[union-attr]
    return {key: value.value for key, value in metadata.items()}


def release_together(barrier: Path, children: int, timeout: float = 60) -> None:
    wait_for(
        f"{children} runs at the barrier",
        lambda: len(list(barrier.glob("arrived-*"))) >= children,
        timeout=timeout,
    )
    (barrier / "go").touch()


def job_results(stdout: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("type") == "job_result"]


@pytest.mark.parametrize("queue", ["email", "video"])
def test_two_runs_of_one_job_at_once(
    queue: str, pg_url: str, emulators: Namespace, tmp_path: Path, outcome: Outcomes
) -> None:
    job, op, config = JOBS[queue]
    if queue == "email":
        # Room for both runs in Resend's limit: what is tested is the leases, not the limiter.
        emulators.resend.configure(rate_limit_requests=100)
        work: Any = run_async(seed_emails(pg_url, "twice", valid=200, invalid=4))
    else:
        work = run_async(seed_videos(pg_url, emulators.stream, "twice", ready=30))
    barrier = tmp_path / "barrier"
    held = {BARRIER: str(barrier)}
    if queue == "email":
        held[BARRIER_MATCH] = AFTER_FIRST_CLAIM
    env = app_env(pg_url, emulators, **held)
    file = run_config_file(tmp_path, op, config)
    # Create the instance's storage before two processes race to (Dagster's SQLite storage
    # stamps its schema version on first use; two at once leave two heads behind).
    instance = DagsterInstance.get()
    children = [
        spawn("-m", CRASHSITE, "run", job, "--json", "--config", str(file), env=env)
        for _ in range(2)
    ]
    try:
        release_together(barrier, 2)
        outputs = [child.communicate(timeout=180) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    counters = []
    for child, (stdout, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr[-3000:]
        [result] = job_results(stdout)
        counters.append(materialized(instance, result["run_id"]))
    audit = run_async(audit_queue(pg_url, emulators, work))
    outcome.add_audit(
        "concurrency",
        f"two `alianza-jobs run {job}` at once, past the schedule guard (Postgres)",
        runs=2,
        audit=audit,
    )
    # Every item was taken by exactly one of the runs.
    assert sum(c["processed"] for c in counters) == audit.items, counters
    if queue == "email":
        assert sum(c["sent"] for c in counters) == len(work.valid)
        # Both really worked at the same time (each sent some): the leases split the queue.
        assert all(c["sent"] > 0 for c in counters), counters
    assert audit.ok(), audit.explain()


def test_a_manual_run_during_a_scheduled_one(
    pg_url: str, emulators: Namespace, tmp_path: Path, outcome: Outcomes
) -> None:
    """``trigger --cron`` runs what the schedule runs, with its tags; an operator starts
    ``run process_email_queue`` meanwhile. The schedule's own guard would skip its next tick
    (naming the run in progress); the manual run is not guarded, and the two share the queue."""
    from alianza_jobs.definitions import defs

    emulators.resend.configure(rate_limit_requests=100)
    work = run_async(seed_emails(pg_url, "manual", valid=200, invalid=4))
    barrier = tmp_path / "barrier"
    # The barrier holds each run at its first bulk write on the queue, after its first claim (the
    # trigger may run health_check before the queue).
    env = app_env(pg_url, emulators, **{BARRIER: str(barrier), BARRIER_MATCH: AFTER_FIRST_CLAIM})
    file = run_config_file(tmp_path, "send_due_emails", {"batch_size": 20})
    instance = DagsterInstance.get()  # its storage exists before two processes race to create it
    scheduled = spawn("-m", CRASHSITE, "trigger", "--cron", "* * * * *", "--json", env=env)
    manual = spawn(
        "-m", CRASHSITE, "run", "process_email_queue", "--json", "--config", str(file), env=env
    )
    try:
        wait_for(
            "both runs at the barrier",
            lambda: len(list(barrier.glob("arrived-*"))) >= 2,
            timeout=60,
        )
        # While they are in progress, the schedule's tick is skipped, naming a run in progress.
        schedule = defs.resolve_schedule_def("process_email_queue_schedule")
        # (It asks the database whether email is due, too, but the guard answers first.)
        context = build_schedule_context(
            instance=instance, resources={"database": Database(url=pg_url)}
        )
        tick = schedule(context)
        in_progress = instance.get_runs(
            RunsFilter(job_name="process_email_queue", statuses=[DagsterRunStatus.STARTED])
        )
        (barrier / "go").touch()
        outputs = [p.communicate(timeout=180) for p in (scheduled, manual)]
    finally:
        for child in (scheduled, manual):
            if child.poll() is None:
                child.kill()
    assert isinstance(tick, SkipReason)
    assert len(in_progress) == 2
    assert any(run.run_id in (tick.skip_message or "") for run in in_progress)

    (tick_out, tick_err), (manual_out, manual_err) = outputs
    by_job = {r["job_name"]: r for r in job_results(tick_out)}
    assert by_job["process_email_queue"]["success"], tick_err[-3000:]
    [manual_result] = job_results(manual_out)
    assert manual.returncode == 0, manual_err[-3000:]
    runs = {
        "scheduled": instance.get_run_by_id(by_job["process_email_queue"]["run_id"]),
        "manual": instance.get_run_by_id(manual_result["run_id"]),
    }
    assert runs["scheduled"] is not None and runs["scheduled"].tags[TAG_CRON] == "* * * * *"
    assert runs["manual"] is not None and TAG_CRON not in runs["manual"].tags
    assert runs["manual"].tags[TAG_TRIGGER] == "cli"
    sent = [materialized(instance, run.run_id)["sent"] for run in runs.values() if run is not None]
    audit = run_async(audit_emails(pg_url, emulators.resend, work))
    outcome.add_audit(
        "concurrency",
        "a manual run during a scheduled one (trigger --cron + run, email queue)",
        runs=2,
        audit=audit,
    )
    assert sum(sent) == len(work.valid) and all(n > 0 for n in sent), sent
    assert audit.ok(), audit.explain()
