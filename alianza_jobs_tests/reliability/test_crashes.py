"""Crashes: ``alianza-jobs run`` SIGKILLed at seeded points, then run again once the lease passes.

For each job a calibration run (no fault) counts the statements on the app database and the API
requests a run makes on the same data; each seed then picks a kind of point (before or after an
SQL statement; before, during or after an API request) and a number within that count, and the
child is killed there: ``kill -9``, no ``finally``, no lease given back, a request possibly still
being served. What must hold after the next run: no row lost (each in its one correct state), none
stuck in ``sending`` or leased, no email delivered twice (the emulator's inbox, per message and per
idempotency key), no item dead-lettered twice, and the platform's row in the status that says so.

Each job is killed on both platform schemas: the jobs' stand-in, and the platform's own as Drizzle
makes it (uuid ids, an enum status without ``sending`` or ``dead``, read through its schema map),
where what the platform's row shows mid-run (``pending`` while ours is ``sending``) differs most
from our own state.

The kills of all seeds of a job run first (one module-scoped campaign), then each seed's test runs
its recovery: by then its lease (30 s, the shortest the video task allows) has long passed, so the
suite never waits for a lease. Calibration and recovery run the real job in this process (no fault
is injected there, and a child costs seconds of imports); only the runs that are killed are
children, as they must be.
"""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance

from alianza_jobs.db.models import EmailDelivery, VideoCheck
from alianza_jobs.defs.emails import process_email_queue
from alianza_jobs.defs.videos import process_streaming_video_queue
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import (
    CRASHSITE,
    KILLED,
    SCHEMAS,
    STAND_IN,
    EmailQueueSeed,
    EmulatorServer,
    Namespace,
    VideoQueueSeed,
    app_env,
    audit_emails,
    audit_videos,
    counting,
    email_rows,
    run_async,
    run_in_process,
    schema_env,
    schema_map_of,
    seed_emails,
    seed_videos,
    spawn,
    streaming_rows,
    wait_for_leases,
)
from alianza_jobs_tests.reliability.hooks import CRASH_AT, CrashPoint

EMAIL_SEEDS = range(10)
VIDEO_SEEDS = range(10)
PARALLEL_KILLS = 2
LEASE_S = 30.0
KINDS: tuple[tuple[str, str], ...] = (
    ("sql", "before"),
    ("http", "during"),
    ("sql", "after"),
    ("http", "after"),
    ("http", "before"),
)
SEEDS = {"process_email_queue": EMAIL_SEEDS, "process_streaming_video_queue": VIDEO_SEEDS}
JOBS: dict[str, dict[str, Any]] = {
    "process_email_queue": {
        "op": "send_due_emails",
        "config": {"batch_size": 20, "lease_s": LEASE_S},
        "table": EmailDelivery,
        "job": process_email_queue.job,
    },
    "process_streaming_video_queue": {
        "op": "check_queued_videos",
        # Small pages and lookups: a run makes several requests and writes, so there are many
        # places to die in.
        "config": {"page_size": 5, "lookup_batch_size": 2, "lease_seconds": LEASE_S},
        "table": VideoCheck,
        "job": process_streaming_video_queue.job,
    },
}


@dataclass
class Killed:
    seed: int
    point: CrashPoint
    url: str
    ns: Namespace
    queue: EmailQueueSeed | VideoQueueSeed
    returncode: int
    stderr: str
    state_after_kill: dict[str, int]


class Campaign:
    def __init__(
        self,
        job: str,
        schema: str,
        server: EmulatorServer,
        make_db: Any,
        workdir: Path,
    ) -> None:
        self.job = job
        self.schema = schema
        self.server = server
        self.make_db = make_db
        self.workdir = workdir
        self.home = workdir / "dagster_home"
        self.home.mkdir(parents=True)
        (self.home / "dagster.yaml").write_text(
            (Path(__file__).parents[2] / "dagster.yaml").read_text()
        )
        # Its storage exists before two children race to create it (Dagster's SQLite storage
        # stamps its schema on first use; two processes at once leave two heads behind).
        DagsterInstance.from_config(str(self.home)).dispose()
        spec = JOBS[job]
        self.config_file = workdir / "run-config.yaml"
        self.config_file.write_text(
            yaml.safe_dump({"ops": {spec["op"]: {"config": spec["config"]}}})
        )
        self.counts: dict[str, int] = {}
        self.killed: dict[int, Killed] = {}

    def env(self, url: str, ns: Namespace, **extra: str) -> dict[str, str]:
        return app_env(url, ns, DAGSTER_HOME=str(self.home), **schema_env(self.schema), **extra)

    def tag(self, what: object) -> str:
        # The stand-in's tags as before the Drizzle runs existed; both name their own namespace.
        suffix = "" if self.schema == STAND_IN else f"-{self.schema}"
        return f"{self.job[8:13]}-{what}{suffix}"

    def prepare(self, tag: str) -> tuple[str, Namespace, EmailQueueSeed | VideoQueueSeed]:
        url = self.make_db()
        ns = self.server.namespace(f"crash-{tag}")
        # Requests stay in flight a moment on the server, so `http:during` kills land mid-request.
        ns.control.update_config({"stream": {"latency_ms": 100}, "resend": {"latency_ms": 200}})
        queue: EmailQueueSeed | VideoQueueSeed
        if self.job == "process_email_queue":
            queue = run_async(seed_emails(url, tag, valid=80, invalid=5, schema=self.schema))
        else:
            queue = run_async(seed_videos(url, ns.stream, tag, schema=self.schema))
        return url, ns, queue

    def run_args(self, module: str) -> list[str]:
        return ["-m", module, "run", self.job, "--json", "--config", str(self.config_file)]

    def run_here(self, url: str, ns: Namespace) -> Any:
        spec = JOBS[self.job]
        return run_in_process(
            spec["job"],
            url,
            ns,
            spec["op"],
            spec["config"],
            database={"schema_map": schema_map_of(self.schema)},
        )

    def calibrate(self) -> None:
        url, ns, _ = self.prepare(self.tag("calibration"))
        with counting(url) as (statements, http):
            assert self.run_here(url, ns).success
        self.counts = {"sql": statements.count, "http": http.count}
        assert self.counts["sql"] > 10 and self.counts["http"] >= 3, self.counts

    def point(self, seed: int) -> CrashPoint:
        target, when = KINDS[seed % len(KINDS)]
        rng = random.Random(f"{self.job}:{seed}")
        # The last few statements of a run are its closing reads and releases; a run with fewer
        # than calibrated (two workers interleave differently) must still reach the point.
        top = self.counts["sql"] - 3 if target == "sql" else self.counts["http"]
        return CrashPoint(target, when, rng.randint(1, max(1, top)))  # type: ignore[arg-type]

    def start_kill(self, seed: int) -> tuple[int, subprocess.Popen[str], Any]:
        point = self.point(seed)
        url, ns, queue = self.prepare(self.tag(seed))
        child = spawn(*self.run_args(CRASHSITE), env=self.env(url, ns, **{CRASH_AT: str(point)}))
        return seed, child, (point, url, ns, queue)

    def finish_kill(self, seed: int, child: subprocess.Popen[str], started: Any) -> None:
        point, url, ns, queue = started
        _, stderr = child.communicate(timeout=180)
        self.killed[seed] = Killed(
            seed, point, url, ns, queue, child.returncode, stderr, run_async(self.states(url))
        )

    async def states(self, url: str) -> dict[str, int]:
        if self.job == "process_email_queue":
            rows = await email_rows(url, self.schema)
        else:
            rows = await streaming_rows(url, self.schema)
        leased = Counter(
            f"{r['status']}{'+leased' if r['locked_by'] else ''}" for r in rows.values()
        )
        return dict(leased)


@pytest.fixture(scope="module")
def campaigns(
    emulator_server: EmulatorServer, make_postgres_database: Any, tmp_path_factory: Any
) -> dict[tuple[str, str], Campaign]:
    """Calibrate both jobs on both schemas, then kill every seed's child, two children at a time
    (the machine has two cores); the recoveries follow in the tests, when every lease has passed.
    """
    runs = {
        (job, schema): Campaign(
            job,
            schema,
            emulator_server,
            make_postgres_database,
            tmp_path_factory.mktemp(f"{job}-{schema}"),
        )
        for job in JOBS
        for schema in SCHEMAS
    }
    for run in runs.values():
        run.calibrate()
    pending = [(run, seed) for run in runs.values() for seed in SEEDS[run.job]]
    running: list[tuple[Campaign, tuple[int, subprocess.Popen[str], Any]]] = []
    while pending or running:
        while pending and len(running) < PARALLEL_KILLS:
            run, seed = pending.pop(0)
            running.append((run, run.start_kill(seed)))
        run, (seed, child, started) = running.pop(0)
        run.finish_kill(seed, child, started)
    return runs


def recover(run: Campaign, seed: int, outcome: Outcomes) -> None:
    killed = run.killed[seed]
    # A kill that never happened would prove nothing: the point must be inside the run.
    assert killed.returncode == KILLED, (
        f"{killed.point} was not reached (exit {killed.returncode}): {killed.stderr[-2000:]}"
    )
    assert f"SIGKILL at {killed.point}" in killed.stderr
    table = JOBS[run.job]["table"]
    wait_for_leases(killed.url, table, timeout=LEASE_S + 30)
    result = run.run_here(killed.url, killed.ns)
    if run.job == "process_email_queue":
        assert isinstance(killed.queue, EmailQueueSeed)
        audit = run_async(audit_emails(killed.url, killed.ns.resend, killed.queue))
    else:
        assert isinstance(killed.queue, VideoQueueSeed)
        audit = run_async(audit_videos(killed.url, killed.queue))
    where = "Postgres" if run.schema == STAND_IN else "Postgres, the Drizzle platform schema"
    outcome.add_audit(
        "crash",
        f"SIGKILL of `alianza-jobs run {run.job}` at a seeded point, then a run after the lease "
        f"({where})",
        runs=2,
        audit=audit,
    )
    print(
        f"\n{run.job} ({run.schema}) seed {seed}: killed at {killed.point}, "
        f"left {killed.state_after_kill}"
    )
    assert result.success
    assert audit.ok(), audit.explain()


@pytest.mark.parametrize("seed", EMAIL_SEEDS)
@pytest.mark.parametrize("schema", SCHEMAS)
def test_email_queue_survives_sigkill(
    campaigns: dict[tuple[str, str], Campaign], schema: str, seed: int, outcome: Outcomes
) -> None:
    recover(campaigns["process_email_queue", schema], seed, outcome)


@pytest.mark.parametrize("seed", VIDEO_SEEDS)
@pytest.mark.parametrize("schema", SCHEMAS)
def test_video_queue_survives_sigkill(
    campaigns: dict[tuple[str, str], Campaign], schema: str, seed: int, outcome: Outcomes
) -> None:
    recover(campaigns["process_streaming_video_queue", schema], seed, outcome)


def test_the_points_cover_every_kind_and_leave_work_half_done(
    campaigns: dict[tuple[str, str], Campaign],
) -> None:
    """At least 20 points per schema across both jobs, every kind of point used on each, and
    most kills leaving rows leased mid-run (the cases a crash can get wrong)."""
    killed = [k for run in campaigns.values() for k in run.killed.values()]
    for schema in SCHEMAS:
        on_schema = [
            k for (_, s), run in campaigns.items() if s == schema for k in run.killed.values()
        ]
        assert len(on_schema) >= 20, schema
        assert {(k.point.target, k.point.when) for k in on_schema} == set(KINDS), schema
    half_done = [k for k in killed if any("+leased" in state for state in k.state_after_kill)]
    assert len(half_done) >= len(killed) // 2, [(str(k.point), k.state_after_kill) for k in killed]
