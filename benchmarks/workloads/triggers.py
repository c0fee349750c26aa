"""The trigger workloads: what event triggers (``ALIANZA_EVENT_TRIGGERS``, on by default) change in
a running deployment, against today's way (``ALIANZA_EVENT_TRIGGERS=false``: every tick runs).

A *deployment* is what ``make dev`` starts, on a scratch ``DAGSTER_HOME`` of its own (the
repository's ``dagster.yaml``, ``ALIANZA_ENV=local``: the app database is SQLite under the home and
the emulators run in-process, sharing ``$DAGSTER_HOME/emulators``), after ``alianza-jobs db
platform-stand-in`` and ``db upgrade`` and no demo data, so nothing is due:

* ``cron``: ``dagster dev`` with ``ALIANZA_EVENT_TRIGGERS=false``; no receiver, no emulator server.
* ``events``: ``scripts/dev`` itself: the webhook receiver, ``alianza-jobs emulate --port 0`` (the
  emulated Stream's webhook dispatcher), the receiver registered with the emulated Stream, then
  ``dagster dev``.

Each is started in a session of its own and stopped as a whole (SIGTERM to its process group,
SIGKILL after a grace period). It is ready when the webserver answers ``/server_info`` and the
scheduler, the sensor daemon and the run queue have each sent a heartbeat since it started (plus,
for ``events``, the receiver answers and the webhook is registered); then a warm-up that is not
measured.

``idle``: both deployments at the same time, nothing due, over a window. What each launched (runs
created in the window, from its instance's run storage, by job) and the CPU its whole process tree
used: for every process under the deployment's root (the root included), user + system +
children's user + children's system, at the end of the window minus at the start. A run is a
process (a child of the code server, whose own step runs in a child of it) that usually starts
and ends inside the window; when it ends its parent reaps it, and the kernel adds everything it
used, and everything its own reaped children used, to the parent's children times. So runs that
came and went are counted through their parent, a process alive at both ends counts the difference,
and one that ended after the start counts what it used after the start (its final total, through
its parent, minus its own at the start). Not counted: a process that left the tree (re-parented to
init without being reaped by us), which the deployments' processes do not do.

``latency``: one deployment at a time (``events``, then ``cron``), the daemon running. At seeded
random moments of a window emails are enqueued (platform ``email_queue`` rows, pending, as
``enqueue_emails`` makes them) and videos turn ready in the emulated Stream (registered at the
window's start with their ``final_after_s``; a queued ``streamings`` row each). Email latency:
from the enqueue's commit to the Resend emulator's delivery time. Video latency: from the moment
Stream has it ready to the first poll (every 0.25 s, read-only) that sees its row ``ready``. In
``events`` a share of the videos gets no webhook (the emulator's ``stream.webhook_drop_rate``,
chosen per uid; the plan picks uids so that half of them are such): a video is "webhook came" when
the receiver stored a delivery for its uid, else "webhook never came", which the video queue's
cron has to settle. After the window the harness
waits until every email is delivered and every row ready, or the deadline (window + 7 minutes: the
5-minute video cron must fit); anything not done by then fails its measurement.

The smoke run keeps the sizes tiny (and runs the video queue every minute, in both deployments,
so that it fits the CI test's ten minutes): its figures show the machinery works, not the targets.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import httpx
import sqlalchemy
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import RunRecord

from alianza_jobs.db.platform_models import platform_metadata
from alianza_jobs.emulators import ResendEmulator, StreamEmulator, VideoSpec
from alianza_jobs.emulators.config import StreamSettings
from benchmarks.harness import (
    REPO,
    CpuWindow,
    TreeCpu,
    child_env,
    dagster_home,
    free_port,
    load1,
    process_tree,
    stop_process_groups,
    wait_for,
)
from benchmarks.workloads.base import Context, Measurement, Target, Workload
from benchmarks.workloads.summary import find

Mode = Literal["cron", "events"]

SEED = 20261202
# Windows and warm-up: the environment overrides them (smoke included), else these.
IDLE_S_ENV, IDLE_S, IDLE_SMOKE_S = "ALIANZA_BENCH_IDLE_S", 600.0, 30.0
LATENCY_S_ENV, LATENCY_S, LATENCY_SMOKE_S = "ALIANZA_BENCH_LATENCY_S", 240.0, 40.0
WARMUP_S_ENV, WARMUP_S, WARMUP_SMOKE_S = "ALIANZA_BENCH_WARMUP_S", 60.0, 10.0
EMAILS, EMAILS_SMOKE = 20, 4
VIDEOS, VIDEOS_SMOKE = 12, 3
DRAIN_S = 7 * 60.0
"""How long after the window everything may take: the 5-minute video cron and its run fit."""
WEBHOOK_DROP_RATE = 0.5
POLL_S = 0.25
INBOX_POLL_S = 1.0
READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 20.0
DAEMONS = ("SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR")
VIDEO_QUEUE = "process_streaming_video_queue"
VIDEO_CRON_S = 300.0
# Smoke only: the video queue every minute, so the cron deployment's videos settle in a minute.
SMOKE_VIDEO_CRON = {"ALIANZA_CRON_PROCESS_STREAMING_VIDEO_QUEUE": "* * * * *"}
SMOKE_VIDEO_CRON_S = 60.0

EMAIL = "email"
VIDEO = "video"
VIDEO_WEBHOOK = "video, webhook came"
VIDEO_NO_WEBHOOK = "video, webhook never came"
TARGET_LATENCY_S = 15.0
TARGET_CPU_RATIO = 0.5


def _bin_dir() -> Path:
    """The venv's bin (``alianza-jobs``, ``dagster``): this interpreter's, else the repo's."""
    here = Path(sys.executable).parent
    return here if (here / "alianza-jobs").exists() else REPO / ".venv" / "bin"


def _seconds(variable: str, default: float, smoke_default: float, smoke: bool) -> float:
    raw = os.environ.get(variable, "").strip()
    if raw:
        return float(raw)
    return smoke_default if smoke else default


@dataclass
class TriggerMeasurement(Measurement):
    """A deployment over a window: ``idle`` (CPU, runs) or ``latency`` (one kind of item)."""

    window_s: float | None = None
    cores: float | None = None
    """CPU seconds over the window's seconds."""
    runs: int | None = None
    """Runs created in the window (by job in ``counters["runs_by_job"]``)."""
    samples: int | None = None
    """Items measured: done ones give a latency, ``not_done`` ones fail the measurement."""
    not_done: int | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    max_s: float | None = None
    budget_s: float | None = None
    """Videos the cron settles: one cron interval plus the video queue's run time (median)."""


class DeploymentError(RuntimeError):
    pass


# -- a deployment -----------------------------------------------------------------------------------


@dataclass
class Deployment:
    mode: Mode
    name: str
    home: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    webhooks_port: int | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    """Wall time (epoch seconds) the root process was started."""
    ready_s: float | None = None
    _log: IO[bytes] | None = None
    _instance: DagsterInstance | None = None

    @classmethod
    def create(
        cls, ctx: Context, mode: Mode, name: str, extra_env: Mapping[str, str] | None = None
    ) -> Deployment:
        root = ctx.work_dir / name
        return cls(
            mode=mode,
            name=name,
            home=dagster_home(root / "dagster_home"),
            log_path=ctx.work_dir / "logs" / f"{name}.log",
            webhooks_port=free_port() if mode == "events" else None,
            extra_env=dict(extra_env or {}),
        )

    @property
    def state_dir(self) -> Path:
        return self.home / "emulators"

    @property
    def app_db(self) -> Path:
        return self.home / "alianza.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        extra: dict[str, str] = {
            "ALIANZA_ENV": "local",
            "DAGSTER_HOME": str(self.home),
            "LOG_LEVEL": "info",
            "METRICS_ENABLED": "false",
        }
        if self.mode == "cron":
            extra["ALIANZA_EVENT_TRIGGERS"] = "false"
        else:
            # scripts/dev's own knobs; ALIANZA_EVENT_TRIGGERS is left unset: the default.
            extra |= {
                "BIN": str(_bin_dir()),
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WEBHOOKS_PORT": str(self.webhooks_port),
            }
        return child_env({**extra, **self.extra_env})

    def argv(self) -> list[str]:
        if self.mode == "events":
            return [str(REPO / "scripts" / "dev")]
        dagster = str(_bin_dir() / "dagster")
        return [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)]

    def setup(self) -> None:
        """The app database as ``make dev`` makes it, without the demo data."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for step in (["db", "platform-stand-in"], ["db", "upgrade"]):
            done = subprocess.run(
                [str(_bin_dir() / "alianza-jobs"), *step],
                cwd=REPO,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            with self.log_path.open("a") as log:
                log.write(f"$ alianza-jobs {' '.join(step)}\n{done.stdout}{done.stderr}")
            if done.returncode != 0:
                raise DeploymentError(
                    f"{self.name}: alianza-jobs {' '.join(step)} exited with {done.returncode}: "
                    f"{(done.stderr or done.stdout).strip()[-500:]}"
                )

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=REPO,
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise DeploymentError(
                f"{self.name} exited (status {code}); last lines of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def instance(self) -> DagsterInstance:
        if self._instance is None:
            self._instance = DagsterInstance.from_config(str(self.home))
        return self._instance

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        started = time.monotonic()
        deadline = started + timeout_s

        def left() -> float:
            return max(deadline - time.monotonic(), 1.0)

        def alive_and(probe: Any) -> Any:
            def check() -> Any:
                self.check_alive()
                return probe()

            return check

        try:
            wait_for(
                f"{self.name}'s webserver",
                alive_and(lambda: _http_ok(f"{self.url}/server_info")),
                timeout_s=left(),
            )

            def heartbeats() -> bool:
                beats = self.instance().get_daemon_heartbeats()
                return all(d in beats and beats[d].timestamp >= self.started_at for d in DAEMONS)

            wait_for(f"{self.name}'s daemon heartbeats", alive_and(heartbeats), timeout_s=left())
            if self.mode == "events":
                wait_for(
                    f"{self.name}'s webhook receiver",
                    alive_and(lambda: _http_ok(f"http://127.0.0.1:{self.webhooks_port}/healthz")),
                    timeout_s=left(),
                )
                wait_for(
                    f"{self.name}'s webhook registration and emulator server",
                    alive_and(
                        lambda: (
                            StreamEmulator(self.state_dir).webhook() is not None
                            and "Alianza emulators on" in self.log_path.read_text(errors="replace")
                        )
                    ),
                    timeout_s=left(),
                )
        except TimeoutError as exc:
            raise DeploymentError(
                f"{exc}; last lines of {self.log_path}:\n{self.log_tail()}"
            ) from None
        self.ready_s = round(time.time() - self.started_at, 1)

    def runs_between(self, start: datetime, end: datetime) -> list[RunRecord]:
        return list(
            self.instance().get_run_records(
                filters=RunsFilter(created_after=start, created_before=end)
            )
        )

    def tree_size(self) -> int:
        return len(process_tree(self.pid)) if self.proc is not None else 0

    def stop(self) -> None:
        stop_all([self])

    def release(self) -> None:
        """Close what the harness holds of it (its instance, its log), once it has stopped."""
        if self._instance is not None:
            with contextlib.suppress(Exception):
                self._instance.dispose()
            self._instance = None
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all(deployments: Sequence[Deployment]) -> None:
    """Stop the deployments together (each waits out its own shutdown: in parallel, not in turn).

    The grace period is short of what a clean stop could take under load on purpose: started by
    ``scripts/dev`` (a background job of a non-interactive shell, so SIGINT is ignored), ``dagster
    dev`` maps SIGTERM to that ignored SIGINT and never ends on it; it is SIGKILLed after the
    grace period whatever it is given. Nothing measured is left to do by then.
    """
    started = [d.proc for d in deployments if d.proc is not None]
    try:
        if started:
            stop_process_groups(started, grace_s=STOP_GRACE_S)
    finally:
        for deployment in deployments:
            deployment.release()


# What each process of a deployment is, by its command line (first match).
_PROCESS_LABELS = (
    ("webhooks serve", "webhook receiver"),
    ("alianza-jobs emulate", "emulator server (webhook dispatcher)"),
    ("dagster_webserver", "webserver"),
    ("dagster._daemon", "daemon"),
    ("code-server start", "code server proxy"),
    ("api grpc", "code server (with the runs it reaped)"),
    ("dagster dev", "dagster dev"),
    ("dg dev", "dagster dev"),
    ("scripts/dev", "scripts/dev"),
    ("multiprocessing", "runs and helpers still running"),
)


def process_label(cmdline: str) -> str:
    for needle, label in _PROCESS_LABELS:
        if needle in cmdline:
            return label
    # Not the command line itself: it holds this machine's paths, and results are committed.
    return "other processes"


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _hold(deployments: Iterable[Deployment], seconds: float) -> None:
    """Let ``seconds`` pass (a warm-up, a measured window), failing as soon as one has died."""
    deployments = list(deployments)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        for deployment in deployments:
            deployment.check_alive()
        time.sleep(min(1.0, left))  # the window itself is the measurement, not a synchronization


def _by_job(records: Sequence[RunRecord]) -> dict[str, int]:
    return dict(sorted(Counter(r.dagster_run.job_name for r in records).items()))


def _by_status(records: Sequence[RunRecord]) -> dict[str, int]:
    return dict(sorted(Counter(r.dagster_run.status.value for r in records).items()))


def _failed(records: Sequence[RunRecord]) -> list[str]:
    return [
        f"{r.dagster_run.job_name} {r.dagster_run.run_id[:8]}"
        for r in records
        if r.dagster_run.status == DagsterRunStatus.FAILURE
    ]


# -- idle -------------------------------------------------------------------------------------------


class Idle(Workload):
    name = "idle"
    title = "Idle deployments: today's crons against event triggers"
    data = (
        "Two deployments as `make dev` starts them (fresh `DAGSTER_HOME`, SQLite, in-process "
        "emulators, no demo data: nothing is due), side by side at the same time: `cron` is "
        "`dagster dev` with `ALIANZA_EVENT_TRIGGERS=false` (every tick launches a run), `events` "
        "is `scripts/dev` (receiver, emulator webhooks, `dagster dev`; queue schedules skip empty "
        "ticks, work sensors every 5 s). After a warm-up, over the window: the runs each created "
        "(by job) and the CPU of its whole process tree (runs included, through the parents that "
        "reap them). *Cores* = CPU s / window s; *vs cron* = events CPU / cron CPU."
    )
    backends = ("sqlite",)
    in_default_run = False

    def execute(self, ctx: Context) -> list[Measurement]:
        out: list[Measurement] = []
        for repetition in range(ctx.repeat):
            out += self._once(ctx, repetition)
        return out

    def _once(self, ctx: Context, repetition: int) -> list[Measurement]:
        window_s = _seconds(IDLE_S_ENV, IDLE_S, IDLE_SMOKE_S, ctx.smoke)
        warmup_s = _seconds(WARMUP_S_ENV, WARMUP_S, WARMUP_SMOKE_S, ctx.smoke)
        modes: tuple[Mode, ...] = ("cron", "events")
        ctx.quiet.wait([], ctx.log)
        deployments = {
            mode: Deployment.create(ctx, mode, f"idle-{mode}-{ctx.slug}-r{repetition + 1}")
            for mode in modes
        }
        with contextlib.ExitStack() as stack:
            try:
                for deployment in deployments.values():
                    deployment.setup()
                stack.callback(stop_all, list(deployments.values()))
                for deployment in deployments.values():
                    deployment.start()
                for deployment in deployments.values():
                    deployment.wait_ready()
                ctx.log(
                    f"  idle #{repetition + 1}: ready ("
                    + ", ".join(f"{m} {d.ready_s} s" for m, d in deployments.items())
                    + f"); warm-up {warmup_s:g} s, then a {window_s:g} s window"
                )
                _hold(deployments.values(), warmup_s)
                load_start = load1()
                start = datetime.now(UTC)
                began = time.monotonic()
                cpu = {mode: TreeCpu(d.pid).begin() for mode, d in deployments.items()}
                others = CpuWindow().start()
                _hold(deployments.values(), window_s)
                used = {mode: c.used_s() for mode, c in cpu.items()}
                elapsed = time.monotonic() - began
                end = datetime.now(UTC)
                foreign = others.foreign_cores(sum(used.values()))
                processes = {mode: d.tree_size() for mode, d in deployments.items()}
                split = {mode: c.by_process(process_label) for mode, c in cpu.items()}
                records = {mode: d.runs_between(start, end) for mode, d in deployments.items()}
            except DeploymentError as exc:
                ctx.log(f"  idle #{repetition + 1}: FAILED: {exc}")
                return [
                    TriggerMeasurement(
                        workload=self.name,
                        backend=ctx.backend,
                        case=mode,
                        size=None,
                        repetition=repetition,
                        success=False,
                        error=str(exc).splitlines()[0],
                    )
                    for mode in modes
                ]
        out: list[Measurement] = []
        for mode, deployment in deployments.items():
            failed = _failed(records[mode])
            m = TriggerMeasurement(
                workload=self.name,
                backend=ctx.backend,
                case=mode,
                size=None,
                repetition=repetition,
                success=not failed,
                error=f"runs failed in the window: {', '.join(failed)}" if failed else None,
                wall_s=round(elapsed, 2),
                window_s=round(elapsed, 2),
                cpu_s=round(used[mode], 2),
                cores=round(used[mode] / elapsed, 4),
                runs=len(records[mode]),
                foreign_cores=foreign,
                load1_start=load_start,
                load1_end=load1(),
                counters={
                    "runs_by_job": _by_job(records[mode]),
                    "runs_by_status": _by_status(records[mode]),
                    "processes_at_end": processes[mode],
                    "cpu_s_by_process": split[mode],
                },
                checks={
                    "ready_s": deployment.ready_s,
                    "warmup_s": warmup_s,
                    "event_triggers": mode == "events",
                },
            )
            ctx.log(
                f"  idle #{repetition + 1} {mode}: {m.cpu_s} CPU s over {m.window_s:g} s "
                f"({m.cores} cores), runs {m.counters['runs_by_job'] or 'none'}"
                + ("" if m.success else f"; FAILED: {m.error}")
            )
            out.append(m)
        return out

    def targets(self, backend: str, summaries: Sequence[Mapping[str, Any]]) -> list[Target]:
        events = find(summaries, "events")
        if events is None:
            return []
        runs = events.get("runs_by_job")
        besides = (
            sum(n for job, n in runs.items() if job != "health_check") if runs is not None else None
        )
        return [
            Target(
                "idle: runs launched by events besides health_check (median per window)",
                backend,
                besides,
                0,
                "<=",
                unit="runs",
            ),
            Target(
                "idle: events CPU vs cron CPU over the same window",
                backend,
                events.get("cpu_ratio_to_cron"),
                TARGET_CPU_RATIO,
                "<=",
                unit="x",
            ),
        ]


# -- latency ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What happens in a window, as offsets from its start: the same in both deployments."""

    emails: list[float]
    videos: list[tuple[str, float]]
    """(uid, seconds until Stream has it ready)."""


def plan(
    repetition: int, window_s: float, emails: int, videos: int, drop_rate: float = WEBHOOK_DROP_RATE
) -> Plan:
    """The window's moments, seeded by the repetition. The videos' uids are picked so that
    ``drop_rate`` of them (rounded) are ones the emulator loses the webhook of (it decides by the
    uid): both populations are there however few the videos. What each video got is still read
    from what the receiver stored, afterwards."""
    rng = random.Random(f"{SEED}:latency:{repetition}")
    earliest = min(2.0, window_s / 10)
    lost = _webhook_loss()
    to_lose = round(videos * drop_rate) if lost is not None else 0
    uids: list[str] = []
    losing = 0
    for k in range(1_000_000):
        if len(uids) == videos:
            break
        uid = hashlib.sha256(f"{SEED}:latency:{repetition}:video:{k}".encode()).hexdigest()[:32]
        if lost is not None:
            if lost(uid, drop_rate):
                if losing == to_lose:
                    continue
                losing += 1
            elif len(uids) - losing == videos - to_lose:
                continue
        uids.append(uid)
    return Plan(
        emails=sorted(rng.uniform(0, window_s) for _ in range(emails)),
        videos=[(uid, rng.uniform(earliest, window_s)) for uid in uids],
    )


def _webhook_loss() -> Any:
    """The emulator's own choice of the videos whose webhook it loses (None: it has none)."""
    try:
        from alianza_jobs.emulators.stream_webhooks import lost_on_the_way
    except ImportError:
        return None
    return lost_on_the_way


@dataclass
class Observed:
    start: datetime
    end: datetime
    enqueued: dict[str, float] = field(default_factory=dict)
    """Subject -> wall time its row was committed."""
    delivered: dict[str, float] = field(default_factory=dict)
    """Subject -> the Resend emulator's delivery time."""
    stream_ready: dict[str, float] = field(default_factory=dict)
    """Uid -> when Stream has it ready (its timeline's final time)."""
    row_ready: dict[str, float] = field(default_factory=dict)
    """Uid -> the first poll that saw its row ready."""
    row_status: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def observe(deployment: Deployment, plan: Plan, window_s: float, label: str) -> Observed:
    """Run the plan against the deployment and watch until everything is done or the deadline."""
    engine = sqlalchemy.create_engine(
        f"sqlite:///{deployment.app_db}", connect_args={"timeout": 30}
    )
    streamings = platform_metadata.tables["streamings"]
    email_queue = platform_metadata.tables["email_queue"]
    stream = StreamEmulator(deployment.state_dir)
    resend = ResendEmulator(deployment.state_dir)
    uids = [uid for uid, _ in plan.videos]
    t0 = time.time()
    seen = Observed(start=datetime.now(UTC), end=datetime.now(UTC))
    try:
        # Stream first, then the rows: a row whose uid Stream does not know yet would be settled
        # as an error by a video queue tick falling in between.
        stream.add_videos(
            [
                VideoSpec(uid=uid, outcome="ready", final_after_s=after, duration=30.0)
                for uid, after in plan.videos
            ]
        )
        for uid in uids:
            described = stream.describe(uid)
            assert described is not None, uid
            seen.stream_ready[uid] = described["final_us"] / 1e6
        if uids:
            with engine.begin() as conn:
                conn.execute(
                    sqlalchemy.insert(streamings),
                    [
                        {"external_id": u, "provider": "cloudflare", "status": "queued"}
                        for u in uids
                    ],
                )
        emails = [(t0 + at, f"{label} #{i + 1}") for i, at in enumerate(plan.emails)]
        deadline = t0 + window_s + DRAIN_S
        next_inbox = 0.0
        with contextlib.closing(
            sqlite3.connect(f"file:{deployment.app_db}?mode=ro", uri=True, timeout=5)
        ) as ro:
            while True:
                deployment.check_alive()
                now = time.time()
                while emails and emails[0][0] <= now:
                    _, subject = emails.pop(0)
                    with engine.begin() as conn:
                        conn.execute(
                            sqlalchemy.insert(email_queue),
                            {
                                "to_address": f"latency{len(seen.enqueued) + 1}@example.com",
                                "subject": subject,
                                "text": f"{subject}: how long until it is delivered",
                                "status": "pending",
                            },
                        )
                    seen.enqueued[subject] = time.time()
                waiting = [u for u in uids if u not in seen.row_ready]
                if waiting:
                    polled = time.time()
                    marks = ", ".join("?" * len(waiting))
                    rows = ro.execute(
                        f"SELECT external_id FROM streamings WHERE status = 'ready' "  # noqa: S608
                        f"AND external_id IN ({marks})",
                        waiting,
                    ).fetchall()
                    for (uid,) in rows:
                        seen.row_ready.setdefault(uid, polled)
                if now >= next_inbox:
                    next_inbox = now + INBOX_POLL_S
                    for email in resend.inbox():
                        if email.subject in seen.enqueued:
                            seen.delivered.setdefault(email.subject, email.created_at.timestamp())
                done = (
                    not emails
                    and len(seen.delivered) == len(plan.emails)
                    and len(seen.row_ready) == len(uids)
                )
                if done or now >= deadline:
                    break
                time.sleep(POLL_S)  # the polling interval: row-ready times are this precise
            for uid, status in ro.execute(
                f"SELECT external_id, status FROM streamings "  # noqa: S608
                f"WHERE external_id IN ({', '.join('?' * len(uids))})",
                uids,
            ).fetchall():
                seen.row_status[uid] = status
    except DeploymentError as exc:
        seen.error = str(exc).splitlines()[0]
    finally:
        engine.dispose()
    seen.end = datetime.now(UTC)
    return seen


def webhooked_uids(app_db: Path) -> set[str]:
    """The uids the receiver stored a delivery for."""
    with contextlib.closing(sqlite3.connect(f"file:{app_db}?mode=ro", uri=True, timeout=5)) as ro:
        return {uid for (uid,) in ro.execute("SELECT DISTINCT uid FROM stream_webhook_deliveries")}


def configure_webhook_drops(state_dir: Path, rate: float) -> float | None:
    """Have the emulated Stream drop the webhook of a share of the videos; None when this
    emulator has no such setting (then every video gets its webhook)."""
    if "webhook_drop_rate" not in StreamSettings.model_fields:
        return None
    StreamEmulator(state_dir).configure(webhook_drop_rate=rate)
    return rate


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1), interpolated between the closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Latency(Workload):
    name = "latency"
    title = "Latency: from work arriving to work done"
    data = (
        "One deployment at a time (`events`, then `cron`; set up as for *idle*), its daemon "
        "running. At seeded random moments of the window, emails are enqueued (pending "
        "`email_queue` rows) and videos turn ready in the emulated Stream (each with a queued "
        "`streamings` row). Email: from the enqueue's commit to the Resend emulator's delivery. "
        "Video: from the moment Stream has it ready to the first poll (0.25 s) that sees its row "
        "`ready`. In `events` the emulator loses the webhook of half the videos "
        "(`stream.webhook_drop_rate`, by uid): *webhook came* are the videos the receiver stored a "
        "delivery for, *webhook never came* the rest, left to the video queue's cron. Anything "
        "not done by the deadline (window + 7 min) fails its row. *Budget*: one video cron "
        "interval plus that deployment's median video queue run."
    )
    backends = ("sqlite",)
    in_default_run = False

    def execute(self, ctx: Context) -> list[Measurement]:
        out: list[Measurement] = []
        modes: tuple[Mode, ...] = ("events", "cron")
        for repetition in range(ctx.repeat):
            for mode in modes:
                out += self._once(ctx, mode, repetition)
        return out

    def _once(self, ctx: Context, mode: Mode, repetition: int) -> list[Measurement]:
        window_s = _seconds(LATENCY_S_ENV, LATENCY_S, LATENCY_SMOKE_S, ctx.smoke)
        warmup_s = _seconds(WARMUP_S_ENV, WARMUP_S, WARMUP_SMOKE_S, ctx.smoke)
        the_plan = plan(
            repetition,
            window_s,
            EMAILS_SMOKE if ctx.smoke else EMAILS,
            VIDEOS_SMOKE if ctx.smoke else VIDEOS,
        )
        cron_s = SMOKE_VIDEO_CRON_S if ctx.smoke else VIDEO_CRON_S
        kinds = [EMAIL, VIDEO_WEBHOOK, VIDEO_NO_WEBHOOK] if mode == "events" else [EMAIL, VIDEO]
        ctx.quiet.wait([], ctx.log)
        deployment = Deployment.create(
            ctx,
            mode,
            f"latency-{mode}-{ctx.slug}-r{repetition + 1}",
            extra_env=SMOKE_VIDEO_CRON if ctx.smoke else None,
        )
        drop_rate: float | None = None
        try:
            deployment.setup()
            deployment.start()
            deployment.wait_ready()
            if mode == "events":
                drop_rate = configure_webhook_drops(deployment.state_dir, WEBHOOK_DROP_RATE)
                if drop_rate is None:
                    ctx.log(
                        "  latency: this emulator has no stream.webhook_drop_rate: every video "
                        "gets its webhook ('webhook never came' stays empty)"
                    )
            ctx.log(
                f"  latency #{repetition + 1} {mode}: ready in {deployment.ready_s} s; warm-up "
                f"{warmup_s:g} s, then {len(the_plan.emails)} emails and {len(the_plan.videos)} "
                f"videos over {window_s:g} s"
            )
            _hold([deployment], warmup_s)
            load_start = load1()
            tree = TreeCpu(deployment.pid).begin()
            others = CpuWindow().start()
            seen = observe(deployment, the_plan, window_s, f"latency r{repetition + 1} {mode}")
            used = tree.used_s()
            foreign = others.foreign_cores(used)
            records = deployment.runs_between(seen.start, seen.end)
            webhooked = webhooked_uids(deployment.app_db) if mode == "events" else set()
        except DeploymentError as exc:
            ctx.log(f"  latency #{repetition + 1} {mode}: FAILED: {exc}")
            return [
                TriggerMeasurement(
                    workload=self.name,
                    backend=ctx.backend,
                    case=f"{mode}: {kind}",
                    size=None,
                    repetition=repetition,
                    success=False,
                    error=str(exc).splitlines()[0],
                )
                for kind in kinds
            ]
        finally:
            deployment.stop()

        video_runs = [
            r.end_time - r.create_timestamp.timestamp()
            for r in records
            if r.dagster_run.job_name == VIDEO_QUEUE and r.end_time is not None
        ]
        # With no video queue run finished in the window (none was needed): the interval alone.
        budget = round(cron_s + (percentile(video_runs, 0.5) or 0.0), 1)
        items: dict[str, dict[str, float | None]] = {
            EMAIL: {
                s: (seen.delivered[s] - at if s in seen.delivered else None)
                for s, at in seen.enqueued.items()
            }
        }
        # An email whose moment never came (the deployment died first) is not done either.
        items[EMAIL] |= {
            f"email {i}": None for i in range(len(seen.enqueued), len(the_plan.emails))
        }
        videos = {
            uid: (seen.row_ready[uid] - seen.stream_ready[uid] if uid in seen.row_ready else None)
            for uid, _ in the_plan.videos
        }
        if mode == "events":
            items[VIDEO_WEBHOOK] = {u: v for u, v in videos.items() if u in webhooked}
            items[VIDEO_NO_WEBHOOK] = {u: v for u, v in videos.items() if u not in webhooked}
        else:
            items[VIDEO] = videos
        common = {
            "deployment_cpu_s": round(used, 2),
            "deployment_cpu_s_by_process": tree.by_process(process_label),
            "runs_by_job": _by_job(records),
            "runs_by_status": _by_status(records),
            "video_queue_run_s": [round(s, 2) for s in video_runs],
        }
        out: list[Measurement] = []
        for kind in kinds:
            latencies = items[kind]
            done = [v for v in latencies.values() if v is not None]
            not_done = len(latencies) - len(done)
            error = seen.error
            if error is None and not_done:
                statuses = Counter(
                    seen.row_status.get(k, "?") for k, v in latencies.items() if v is None
                )
                error = f"{not_done} of {len(latencies)} not done by the deadline" + (
                    f" (rows: {dict(statuses)})" if kind != EMAIL else ""
                )
            checks: dict[str, Any] = {"ready_s": deployment.ready_s, "warmup_s": warmup_s}
            if kind == VIDEO_NO_WEBHOOK:
                checks["webhook_drop_rate"] = drop_rate
                if drop_rate is None:
                    checks["todo"] = (
                        "stream.webhook_drop_rate is not in the emulator's config: every video "
                        "got its webhook"
                    )
            m = TriggerMeasurement(
                workload=self.name,
                backend=ctx.backend,
                case=f"{mode}: {kind}",
                size=None,
                repetition=repetition,
                success=error is None,
                error=error,
                wall_s=round((seen.end - seen.start).total_seconds(), 2),
                window_s=window_s,
                rows=len(latencies),
                samples=len(latencies),
                not_done=not_done,
                p50_s=_round(percentile(done, 0.5)),
                p95_s=_round(percentile(done, 0.95)),
                max_s=_round(max(done, default=None)),
                budget_s=budget if kind in (VIDEO, VIDEO_NO_WEBHOOK) else None,
                runs=len(records),
                foreign_cores=foreign,
                load1_start=load_start,
                load1_end=load1(),
                counters={**common, "latencies_s": sorted(round(v, 3) for v in done)},
                checks=checks,
            )
            ctx.log(
                f"  latency #{repetition + 1} {mode}: {kind}: {len(done)}/{len(latencies)} done, "
                f"p50 {m.p50_s} s, p95 {m.p95_s} s, max {m.max_s} s"
                + ("" if m.success else f"; FAILED: {m.error}")
            )
            out.append(m)
        return out

    def targets(self, backend: str, summaries: Sequence[Mapping[str, Any]]) -> list[Target]:
        def median_of(case: str, metric: str) -> float | None:
            summary = find(summaries, case)
            return None if summary is None else summary["median"].get(metric)

        no_webhook = f"events: {VIDEO_NO_WEBHOOK}"
        return [
            Target(
                "latency: email p95, events",
                backend,
                median_of(f"events: {EMAIL}", "p95_s"),
                TARGET_LATENCY_S,
                "<=",
                unit="s",
            ),
            Target(
                "latency: video p95 when its webhook came, events",
                backend,
                median_of(f"events: {VIDEO_WEBHOOK}", "p95_s"),
                TARGET_LATENCY_S,
                "<=",
                unit="s",
            ),
            Target(
                "latency: slowest video whose webhook never came, events",
                backend,
                median_of(no_webhook, "max_s"),
                # Without a run to time (none finished): the cron interval alone.
                median_of(no_webhook, "budget_s") or VIDEO_CRON_S,
                "<=",
                unit="s",
                note="one video cron interval + its run",
            ),
        ]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


__all__ = ["Deployment", "Idle", "Latency", "TriggerMeasurement", "percentile", "plan"]
