"""The daemon dies (SIGKILL) while a run is in progress; a new daemon takes over.

First, the daemon alone dies while an email queue run is sending. What must hold: the run ends (succeeded or failed, never left "started"), the run queued while no
daemon was alive is launched exactly once by the new one, and every email of the queue is delivered
exactly once: each row ``sent`` with its own Resend message id, the Resend emulator's inbox holding
each message once.

Then the run's own process dies with the daemon: run monitoring fails it, run_retries re-runs it.
"""

from __future__ import annotations

import time

import psutil
import psycopg
import pytest
from dagster import DagsterRunStatus, RunsFilter

from alianza_jobs.emulators import ResendEmulator
from alianza_jobs_tests.e2e.crash_location import victim_pid_name
from alianza_jobs_tests.e2e.harness import Deployment, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

JOB = "process_email_queue"
VICTIM = "crash_victim"
MAX_RUNTIME_S = 25
FIRST_BATCH = 200
WHILE_DOWN = 20
# Small batches, one at a time, a second per Resend request: the run is mid-queue for ~20 s.
RUN_CONFIG = {
    "ops": {
        "send_due_emails": {
            "config": {"batch_size": 10, "concurrency": 1, "time_budget_s": 50, "lease_s": 20}
        }
    }
}
LATENCY_MS = 1000


def _add_emails(deployment: Deployment, first: int, count: int) -> None:
    rows = [
        (f"user{i}@example.com", f"Order {i} confirmed", f"<p>Order {i}</p>", f"Order {i}")
        for i in range(first, first + count)
    ]
    with psycopg.connect(deployment.app_db_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO email_queue (to_address, subject, html, text, status) "
            "VALUES (%s, %s, %s, %s, 'pending')",
            rows,
        )


def _statuses(deployment: Deployment) -> dict[str, int]:
    return dict(deployment.app_sql("SELECT status, count(*) FROM email_queue GROUP BY status"))


def _starting_events(deployment: Deployment, run_id: str) -> int:
    [(count,)] = deployment.dagster_sql(
        "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
        [run_id, "PIPELINE_STARTING"],
    )
    return int(count)


def test_a_daemon_killed_mid_run_loses_nothing_and_repeats_nothing(deployment: Deployment) -> None:
    # The work sensor would send the queue within seconds of its rows appearing: this test's own
    # slow runs must do the sending (the schedule is off the clock for the suite likewise).
    with deployment.sensor_stopped("queue_work_sensor"):
        _daemon_killed_mid_run(deployment)


def _daemon_killed_mid_run(deployment: Deployment) -> None:
    inbox = ResendEmulator(deployment.emulator_state_dir)
    inbox.configure(latency_ms=LATENCY_MS)
    _add_emails(deployment, 0, FIRST_BATCH)
    first = deployment.launch(JOB, run_config=RUN_CONFIG, tags={"e2e/case": "daemon-crash"})

    def mid_queue() -> bool:
        running = deployment.graphql.get_run_status(first) is DagsterRunStatus.STARTED
        return running and 0 < _statuses(deployment).get("sent", 0) < FIRST_BATCH - 50

    wait_for("the run to be sending, well before the end of the queue", mid_queue, timeout=120)
    crashed = time.time()
    deployment.daemon.kill_main_process()

    # No daemon now. The webserver still takes launches: they wait in the queue.
    _add_emails(deployment, FIRST_BATCH, WHILE_DOWN)
    second = deployment.launch(JOB, run_config=RUN_CONFIG, tags={"e2e/case": "daemon-crash"})
    assert deployment.graphql.get_run_status(second) is DagsterRunStatus.QUEUED

    deployment.daemon.start()
    deployment.wait_for_daemon(since=crashed, timeout=120)
    first_end = deployment.wait_for_run(first, timeout=180)
    second_end = deployment.wait_for_run(second, timeout=180)
    inbox.configure(latency_ms=0)

    # The first run ended; report how (a run worker outlives its daemon with DefaultRunLauncher).
    print(f"\ne2e: run {first} (in progress at the crash) ended {first_end.value}")
    assert first_end in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
    assert second_end is DagsterRunStatus.SUCCESS
    assert _starting_events(deployment, second) == 1, "the queued run was launched more than once"
    one, two = deployment.run_record(first), deployment.run_record(second)
    assert one.end_time is not None and two.start_time is not None
    assert two.start_time >= one.end_time, "two runs of the job overlapped"

    # If the first run died holding a lease, its rows come back when the lease ends: drain them.
    def drained() -> bool:
        statuses = _statuses(deployment)
        if set(statuses) <= {"sent"}:
            return True
        active = [
            r
            for r in deployment.run_records(JOB)
            if r.dagster_run.status not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
        ]
        if not active:
            deployment.launch(JOB, run_config=RUN_CONFIG, tags={"e2e/case": "daemon-crash-drain"})
        return False

    wait_for("every email to be sent", drained, timeout=150, interval=3)

    total = FIRST_BATCH + WHILE_DOWN
    rows = deployment.app_sql(
        "SELECT e.status, d.provider_message_id FROM email_queue e "
        "LEFT JOIN email_deliveries d ON d.email_id = e.id::text"
    )
    assert len(rows) == total
    assert {status for status, _ in rows} == {"sent"}
    message_ids = [message_id for _, message_id in rows]
    assert len(set(message_ids)) == total, "two rows share a Resend message id"
    delivered = inbox.inbox()
    assert len(delivered) == total, f"{len(delivered)} deliveries for {total} emails"
    assert all(n == 1 for n in inbox.counts_by_message().values()), inbox.duplicates()
    assert {e.id for e in delivered} == set(message_ids)
    stuck = [
        r.dagster_run.run_id
        for r in deployment.run_records(JOB)
        if r.dagster_run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)
    ]
    assert not stuck, f"runs left started: {stuck}"


def test_a_run_killed_with_the_daemon_is_failed_by_run_monitoring_then_retried(
    deployment: Deployment,
) -> None:
    """The harsher crash: the daemon, the code server that launched the run and the run's own
    process all die at once (a machine reboot, or systemd's default KillMode=control-group on a
    daemon restart). Nothing is left to report the run's end: run monitoring must fail it when its
    dagster/max_runtime passes, and run_retries must start it again."""
    # The job's own dagster/max_runtime is its 15 s timeout + 60 s of start-up grace; a launch may
    # set its own, and this one does, so the suite waits 25 s instead of 75. crash_victim is alone
    # in its code location (crash_location.py): killing that code server touches no other run.
    original = deployment.launch(
        VICTIM, tags={"e2e/case": "worker-killed", "dagster/max_runtime": str(MAX_RUNTIME_S)}
    )
    assert deployment.run_record(original).dagster_run.tags["dagster/max_runtime"] == "25"
    pid_file = deployment.e2e_state_dir / victim_pid_name(original)

    def pid() -> int | None:
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        return int(text) if text.isdigit() else None

    worker = psutil.Process(wait_for("the run's process to start", pid, timeout=120))
    code_server = worker.parent()
    assert code_server is not None and "grpc" in " ".join(code_server.cmdline())

    crashed = time.time()
    deployment.daemon.kill_main_process()
    for process in (code_server, worker):
        process.kill()
    deployment.daemon.start()
    deployment.wait_for_daemon(since=crashed, timeout=120)

    assert deployment.wait_for_run(original, timeout=180) is DagsterRunStatus.FAILURE
    events = deployment.run_events(original)
    assert [kind for kind, _ in events].count("PIPELINE_FAILURE") == 1
    ended = [
        message for kind, message in events if kind in ("PIPELINE_CANCELING", "PIPELINE_FAILURE")
    ]
    assert any("maximum runtime" in message for message in ended), events

    def retry() -> str | None:
        runs = deployment.instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": original}))
        return runs[0].run_id if runs else None

    retried = wait_for(f"run_retries to retry {original}", retry, timeout=90)
    assert deployment.wait_for_run(retried, timeout=120) is DagsterRunStatus.SUCCESS
    retries = deployment.instance.get_runs(RunsFilter(tags={"dagster/root_run_id": original}))
    assert [r.run_id for r in retries] == [retried], "retried more than once"
    print(
        f"\ne2e: run {original} (its process killed) failed by run monitoring, retried as {retried}"
    )
