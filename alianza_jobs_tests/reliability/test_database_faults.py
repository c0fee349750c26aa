"""Database faults: a connection killed mid-batch, Postgres restarted between runs, SQLite locked by
another writer. The run fails or retries cleanly, and the next run completes the work.

* ``pg_terminate_backend`` of the connection about to run the n-th statement of a run (seeded n),
  from another session, as an operator or a failover does it. The op (same function, same retry
  machinery, a 0.2 s retry delay instead of tens of seconds) fails that attempt and retries.
* The shared Postgres server restarted (``pg_ctlcluster ... restart``, once in the whole suite)
  after a run of each queue was SIGKILLed mid-batch; the runs after it finish the work. The
  server is brought back up in a ``finally`` whatever happens.
* Another process holding SQLite's write lock (``BEGIN EXCLUSIVE``): shorter than the busy timeout,
  the run waits and completes; longer, the run fails with SQLite's own "database is locked", its
  rows come back when their lease passes, and the next run completes.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from alianza_jobs.db import engine as database_module
from alianza_jobs.db.models import EmailDelivery, VideoCheck
from alianza_jobs.defs.emails import process_email_queue as email_task
from alianza_jobs.defs.videos import process_streaming_video_queue as video_task
from alianza_jobs_tests.conftest import PG_ADMIN_URL
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import (
    CRASHSITE,
    KILLED,
    Namespace,
    app_env,
    audit_emails,
    audit_queue,
    failure_of,
    fast_job,
    retries_of,
    run_async,
    run_config_file,
    run_in_process,
    seed_emails,
    seed_videos,
    spawn,
    wait_for,
    wait_for_leases,
)
from alianza_jobs_tests.reliability.hooks import (
    CRASH_AT,
    AppStatements,
    SqliteLocker,
    database_name,
    lock_sqlite_at_begin,
    terminate_backend_at,
)

EMAIL: tuple[str, dict[str, Any]] = (
    "send_due_emails",
    {"batch_size": 10, "concurrency": 2, "backoff_base_s": 0.0},
)
VIDEO: tuple[str, dict[str, Any]] = (
    "check_queued_videos",
    {"page_size": 5, "lookup_batch_size": 2},
)


@contextmanager
def hooked(url: str) -> Iterator[AppStatements]:
    statements = AppStatements(database_name(url))
    try:
        yield statements
    finally:
        statements.remove()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("queue", ["email", "video"])
def test_connection_terminated_mid_batch(
    queue: str, seed: int, pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    # Statement 1-2 are the breaker's load and the claim; the cut lands among the batch's writes.
    n = random.Random(f"terminate:{queue}:{seed}").randint(3, 14)
    if queue == "email":
        work: Any = run_async(seed_emails(pg_url, f"cut{seed}", valid=40, invalid=2))
        job = fast_job(email_task.TASK, email_task.send_due_emails, retries=2)
        op, config = EMAIL
    else:
        work = run_async(seed_videos(pg_url, emulators.stream, f"cut{seed}"))
        job = fast_job(video_task.TASK, video_task.check_queued_videos, retries=2)
        op, config = VIDEO
    fired: list[int] = []
    with hooked(pg_url) as statements:
        terminate_backend_at(statements, n, PG_ADMIN_URL, fired)
        first = run_in_process(job, pg_url, emulators, op, config)
    assert fired, f"statement {n} never ran: the cut missed the run"
    runs = 1
    if not first.success:  # failing cleanly is allowed: then the next run must finish
        runs += 1
        assert run_in_process(job, pg_url, emulators, op, config).success
    audit = run_async(audit_queue(pg_url, emulators, work))
    outcome.add_audit(
        "database",
        f"pg_terminate_backend mid-batch, seeded statement ({queue} queue, Postgres)",
        runs=runs,
        audit=audit,
    )
    # The attempt that lost its connection failed with the driver's error, and was retried.
    assert first.success, failure_of(first, op)
    assert retries_of(first) >= 1
    assert audit.ok(), audit.explain()


# -- Postgres restarted ------------------------------------------------------------------------------


def pg_ready() -> bool:
    return (
        subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False
        ).returncode
        == 0
    )


def cluster() -> tuple[str, str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return version, "main"


@contextmanager
def postgres_restarted() -> Iterator[float]:
    """Restart the shared server once; make sure it is up again whatever happens. Yields how
    long it was unavailable."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").exists():
        pytest.skip("no pg_ctlcluster: cannot restart this machine's Postgres")
    version, name = cluster()
    started = time.monotonic()
    try:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        wait_for("Postgres to accept connections again", pg_ready, timeout=60, interval=0.2)
        yield time.monotonic() - started
    finally:
        if not pg_ready():
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
                check=False,
                capture_output=True,
                timeout=120,
            )
            wait_for("Postgres to come back", pg_ready, timeout=60, interval=0.2)


def test_postgres_restarted_between_runs(
    pg_url: str, emulators: Namespace, tmp_path: Path, outcome: Outcomes
) -> None:
    """A run is SIGKILLed mid-batch (rows leased and stamped, a batch's answer just arrived), the
    server restarts, and the next run finds a working database and finishes everything. (The
    email queue: its lease can be seconds long; the video queue's is at least 30 s, and its
    recovery is the crash tests'.)"""
    emails = run_async(seed_emails(pg_url, "restart", valid=40, invalid=2))
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = app_env(pg_url, emulators, DAGSTER_HOME=str(home), **{CRASH_AT: "http:after:2"})
    config = run_config_file(tmp_path, EMAIL[0], {**EMAIL[1], "lease_s": 3.0})
    child = spawn("-m", CRASHSITE, "run", "process_email_queue", "--config", str(config), env=env)
    _, err = child.communicate(timeout=180)
    assert child.returncode == KILLED, err[-2000:]

    with postgres_restarted() as downtime:
        print(f"\nPostgres was unavailable for {downtime:.1f} s")
        wait_for_leases(pg_url, EmailDelivery, timeout=30)
        run = run_in_process(email_task.job, pg_url, emulators, *EMAIL)
    audit = run_async(audit_emails(pg_url, emulators.resend, emails))
    outcome.add_audit(
        "database",
        "Postgres restarted between a SIGKILLed run and the next (email queue)",
        runs=2,
        audit=audit,
    )
    assert run.success, failure_of(run, EMAIL[0])
    assert audit.ok(), audit.explain()
    with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- SQLite locked by another writer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue", "hold_s", "busy_s"),
    [("email", 0.5, 10.0), ("video", 0.5, 10.0), ("email", 5.0, 1.5)],
    ids=["email-shorter-than-busy-timeout", "video-shorter-than-busy-timeout", "email-longer"],
)
def test_sqlite_locked_by_another_writer(
    queue: str,
    hold_s: float,
    busy_s: float,
    sqlite_url: str,
    emulators: Namespace,
    monkeypatch: pytest.MonkeyPatch,
    outcome: Outcomes,
) -> None:
    # A busy timeout of seconds instead of 30 s, so "longer than it" takes seconds, not a minute;
    # each side of it by a margin a loaded machine keeps (the other writer's process may wake up
    # late to let go of the lock, or the run late to start waiting for it).
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", round(busy_s * 1000))
    if queue == "email":
        work: Any = run_async(seed_emails(sqlite_url, "locked", valid=40, invalid=2))
        job = fast_job(email_task.TASK, email_task.send_due_emails, retries=0)
        # One worker: at the hooked BEGIN no other transaction of ours holds the lock (the other
        # writer would wait for it, and it for the other writer).
        op, config = EMAIL[0], {**EMAIL[1], "lease_s": 2.0, "concurrency": 1}
        # The leases are on the jobs' bookkeeping rows, not the platform's.
        table: type[EmailDelivery] | type[VideoCheck] = EmailDelivery
    else:
        work = run_async(seed_videos(sqlite_url, emulators.stream, "locked"))
        job = fast_job(video_task.TASK, video_task.check_queued_videos, retries=0)
        op, config = VIDEO
        table = VideoCheck
    locker = SqliteLocker(Path(str(database_name(sqlite_url))), hold_s)
    fired: list[int] = []
    try:
        with hooked(sqlite_url) as statements:
            # The 4th transaction: after the claim, in the middle of the first batch.
            lock_sqlite_at_begin(statements, 4, locker, fired)
            first = run_in_process(job, sqlite_url, emulators, op, config)
        locker.wait()
    finally:
        locker.kill()
    assert fired, "the lock was never taken"
    runs = 1
    if hold_s > busy_s:
        assert not first.success
        assert "database is locked" in failure_of(first, op)
        wait_for_leases(sqlite_url, table, timeout=30)
        runs += 1
        assert run_in_process(job, sqlite_url, emulators, op, config).success
    audit = run_async(audit_queue(sqlite_url, emulators, work))
    outcome.add_audit(
        "database",
        f"SQLite write lock held {hold_s:g} s by another process "
        f"({'longer' if hold_s > busy_s else 'shorter'} than the busy timeout, {queue} queue)",
        runs=runs,
        audit=audit,
    )
    if hold_s <= busy_s:
        assert first.success, failure_of(first, op)  # waited for the lock, then went on
    assert audit.ok(), audit.explain()
