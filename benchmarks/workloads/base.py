"""What a workload is, and the loop that measures a queue workload against the baseline.

A :class:`QueueWorkload` (video queue, email queue, session cleanup) says how to fill a database for
a size, how to set the emulator up for a run, what the end state must be, and which targets apply;
:meth:`QueueWorkload.execute` does the rest: one template per size, then per repetition every case
(the baseline at its size, ours at each of its sizes) on a fresh copy, alternating which goes
first, each in a child process, each checked before it counts. A workload runs on the platform
schemas it lists in ``schemas`` (the context says which one this run is on).
"""

from __future__ import annotations

import contextlib
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.emulators.constants import EMULATOR_ACCOUNT_ID
from benchmarks.harness import (
    DEFAULT_SCHEMA,
    ChildOutcome,
    Databases,
    EmulatorServer,
    PlatformSchema,
    Quiet,
    child_command,
    child_env,
    emulator_server,
    run_process,
)

Impl = Literal["ours", "baseline"]
EMAIL_FROM = "Alianza <jobs@alianza.example>"
# Where the APIs are for a workload that must not call them: nothing listens on port 9.
UNUSED_API = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Case:
    impl: Impl
    size: int

    @property
    def label(self) -> str:
        return f"{self.impl} @ {self.size:,}"


@dataclass
class Measurement:
    """One measured run. ``rows_per_s`` and the ratios are computed from the job's own wall time."""

    workload: str
    backend: str
    case: str
    """``ours``/``baseline`` for queue workloads; what was measured otherwise (``import``)."""
    size: int | None
    repetition: int
    success: bool
    wall_s: float | None = None
    op_s: float | None = None
    """Ours only: the op's own duration (the task, without Dagster's run around it)."""
    process_s: float | None = None
    rows: int | None = None
    rows_per_s: float | None = None
    api_calls: int | None = None
    api_calls_per_row: float | None = None
    rate_limited: int | None = None
    peak_rss_mb: float | None = None
    cpu_s: float | None = None
    foreign_cores: float | None = None
    load1_start: float | None = None
    load1_end: float | None = None
    attempts: int = 1
    error: str | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    schema: str = DEFAULT_SCHEMA.name
    """The platform schema the run's data was in (``default``: the stand-in; ``drizzle``)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    databases: Databases
    work_dir: Path
    dagster_home: Path
    repeat: int
    smoke: bool
    quiet: Quiet
    log: Callable[[str], None]
    schema: PlatformSchema = DEFAULT_SCHEMA

    @property
    def backend(self) -> str:
        return self.databases.backend

    @property
    def where(self) -> str:
        """``backend`` (on the default schema) or ``backend/schema``: for logs and file names."""
        if self.schema is DEFAULT_SCHEMA:
            return self.backend
        return f"{self.backend}/{self.schema.name}"

    @property
    def slug(self) -> str:
        return self.where.replace("/", "-")


@dataclass(frozen=True)
class EmulatorSettings:
    latency_ms: float
    stream_rate_limit: int | None = None
    stream_rate_window_s: float | None = None
    resend_rate_limit: int | None = None

    def describe(self) -> str:
        parts = [f"{self.latency_ms:g} ms latency"]
        if self.stream_rate_limit is not None:
            parts.append(
                f"Stream {self.stream_rate_limit:,} requests / {self.stream_rate_window_s or 300:g} s"
            )
        if self.resend_rate_limit is not None:
            parts.append(f"Resend {self.resend_rate_limit} requests/s")
        return ", ".join(parts)


@contextlib.contextmanager
def maybe_emulator(
    settings: EmulatorSettings | None, ctx: Context, name: str
) -> Iterator[EmulatorServer | None]:
    if settings is None:
        yield None
        return
    state_dir = ctx.work_dir / f"emulator-{name}-{ctx.slug}"
    with emulator_server(
        state_dir,
        log_path=ctx.work_dir / "logs" / f"emulator-{name}-{ctx.slug}.log",
        latency_ms=settings.latency_ms,
        stream_rate_limit=settings.stream_rate_limit,
        stream_rate_window_s=settings.stream_rate_window_s,
        resend_rate_limit=settings.resend_rate_limit,
    ) as server:
        yield server


def production_env(
    ctx: Context, database_url: str, server: EmulatorServer | None
) -> dict[str, str]:
    """``ALIANZA_ENV=prod`` settings pointing at the socket emulator, with tokens of their own
    (the emulators' rate limits are per token: every run starts with a fresh budget, as a run with
    the account to itself would), and the context's schema map (``ALIANZA_SCHEMA_MAP``: what the
    ``Database`` resource, and the baseline, read the platform's tables through)."""
    root = server.root if server is not None else UNUSED_API
    schema_map = (
        {"ALIANZA_SCHEMA_MAP": ctx.schema.schema_map_path} if ctx.schema.schema_map_path else {}
    )
    return child_env(
        {
            **schema_map,
            "ALIANZA_ENV": "prod",
            "DATABASE_URL": database_url,
            "CLOUDFLARE_ACCOUNT_ID": EMULATOR_ACCOUNT_ID,
            "CLOUDFLARE_STREAM_API_TOKEN": f"bench-stream-{secrets.token_hex(8)}",
            "CLOUDFLARE_API_BASE_URL": f"{root}/client/v4",
            "RESEND_API_KEY": f"re_bench_{secrets.token_hex(8)}",
            "RESEND_API_BASE_URL": root,
            "EMAIL_FROM": EMAIL_FROM,
            "LOG_LEVEL": "info",
            "METRICS_ENABLED": "false",
            "DAGSTER_HOME": str(ctx.dagster_home),
        }
    )


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    value: float | None
    threshold: float
    comparison: Literal[">=", "<="]
    unit: str = ""
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        if self.comparison == ">=":
            return self.value >= self.threshold
        return self.value <= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


class Workload(ABC):
    name: str
    title: str
    data: str = ""
    """What the workload's data is, and what its end state must be (for the report)."""
    emulator: EmulatorSettings | None = None
    schemas: tuple[str, ...] = (DEFAULT_SCHEMA.name,)
    """The platform schemas (``harness.PLATFORM_SCHEMAS``) this workload can run on."""
    backends: tuple[str, ...] = ("sqlite", "postgres")
    """The app database backends this workload can run on."""
    in_default_run: bool = True
    """False: run only when named (``--only``) or asked for with ``--triggers`` (long by nature)."""

    @abstractmethod
    def execute(self, ctx: Context) -> list[Measurement]: ...

    def targets(self, backend: str, summaries: Sequence[Mapping[str, Any]]) -> list[Target]:
        return []


class QueueWorkload(Workload):
    """A job that drains a queue, held against the TypeScript package's loop on the same data."""

    job: str
    timeout_s: float = 900.0

    @abstractmethod
    def cases(self, smoke: bool) -> list[Case]: ...

    @abstractmethod
    async def populate(
        self, engine: AsyncEngine, size: int, smoke: bool, schema: PlatformSchema
    ) -> dict[str, Any]:
        """Fill a migrated database (its platform tables in ``schema``) for ``size``; returns
        what the end state is checked against."""

    def prepare(
        self, server: EmulatorServer | None, size: int, expected: Mapping[str, Any]
    ) -> None:
        """Set the emulator up for one run (default: nothing)."""
        return None

    @abstractmethod
    def verify(
        self,
        database_url: str,
        server: EmulatorServer | None,
        case: Case,
        expected: Mapping[str, Any],
        counters: Mapping[str, Any],
        schema: PlatformSchema,
    ) -> dict[str, Any]:
        """Check the end state; raise AssertionError if it is wrong. Returns what was checked."""

    @abstractmethod
    def rows(self, case: Case, expected: Mapping[str, Any]) -> int:
        """The rows the run drained (the numerator of rows per second)."""

    def api_calls(self, server: EmulatorServer | None) -> tuple[int | None, int | None]:
        """(calls served, of which refused with 429) since the emulator was last reset."""
        return None, None

    def run_config(self, case: Case) -> dict[str, Any]:
        return {}

    def execute(self, ctx: Context) -> list[Measurement]:
        cases = self.cases(ctx.smoke)
        sizes = sorted({case.size for case in cases})
        measurements: list[Measurement] = []
        with maybe_emulator(self.emulator, ctx, self.name) as server:
            expected: dict[int, dict[str, Any]] = {}
            for size in sizes:
                ctx.log(f"  {self.name}/{ctx.where}: generating {size:,} rows")

                async def populate(engine: AsyncEngine, size: int = size) -> dict[str, Any]:
                    return await self.populate(engine, size, ctx.smoke, ctx.schema)

                expected[size] = ctx.databases.template(self._key(ctx, size), populate, ctx.schema)
            for repetition in range(ctx.repeat):
                # Alternate who goes first, so a drift in the machine's load favours neither.
                order = cases if repetition % 2 == 0 else list(reversed(cases))
                for case in order:
                    measurements.append(
                        self._measure(ctx, server, case, expected[case.size], repetition)
                    )
        return measurements

    def _key(self, ctx: Context, size: int) -> str:
        if ctx.schema is DEFAULT_SCHEMA:
            return f"{self.name}_{size}"
        return f"{self.name}_{size}_{ctx.schema.name}"

    def _measure(
        self,
        ctx: Context,
        server: EmulatorServer | None,
        case: Case,
        expected: Mapping[str, Any],
        repetition: int,
    ) -> Measurement:
        helpers = [server.pid] if server is not None else []
        best: Measurement | None = None
        for attempt in range(1, ctx.quiet.max_attempts + 1):
            ctx.quiet.wait(helpers, ctx.log)
            with ctx.databases.copy(self._key(ctx, case.size)) as url:
                self.prepare(server, case.size, expected)
                env = production_env(ctx, url, server)
                target = self.job
                outcome = run_process(
                    child_command(case.impl, target, run_config=self.run_config(case)),
                    env=env,
                    timeout_s=self.timeout_s,
                    log_path=ctx.work_dir / "logs" / f"{self.name}-{ctx.slug}.log",
                    helper_pids=helpers,
                )
                measurement = self._record(ctx, server, case, expected, repetition, outcome, url)
            measurement.attempts = attempt
            ctx.log(
                f"  {self.name}/{ctx.where} {case.label} #{repetition + 1}: {_brief(measurement)}"
            )
            if best is None or _preference(measurement) < _preference(best):
                best = measurement
            disturbed = (measurement.foreign_cores or 0) > ctx.quiet.max_foreign_during
            if not disturbed or not measurement.success or attempt == ctx.quiet.max_attempts:
                break
            ctx.log(f"    disturbed ({measurement.foreign_cores} cores used by others): again")
        assert best is not None
        return best

    def _record(
        self,
        ctx: Context,
        server: EmulatorServer | None,
        case: Case,
        expected: Mapping[str, Any],
        repetition: int,
        outcome: ChildOutcome,
        url: str,
    ) -> Measurement:
        report = outcome.report
        counters = dict(report.get("counters") or {})
        m = Measurement(
            workload=self.name,
            backend=ctx.backend,
            schema=ctx.schema.name,
            case=case.impl,
            size=case.size,
            repetition=repetition,
            success=bool(report.get("success")) and outcome.returncode == 0,
            wall_s=report.get("wall_s"),
            process_s=outcome.process_s,
            peak_rss_mb=outcome.peak_rss_mb,
            cpu_s=outcome.cpu_s,
            foreign_cores=outcome.foreign_cores,
            load1_start=outcome.load1_start,
            load1_end=outcome.load1_end,
            counters=counters,
        )
        if isinstance(counters.get("duration_ms"), int | float):
            m.op_s = round(float(counters["duration_ms"]) / 1000, 4)
        if report.get("via"):
            m.checks["job_from"] = report["via"]
        if report.get("experiment"):
            m.checks["experiment"] = report["experiment"]
        if report.get("run_config"):
            m.checks["run_config"] = report["run_config"]
        if outcome.timed_out:
            m.success, m.error = False, f"killed after {self.timeout_s:g} s"
        elif not m.success:
            m.error = report.get("error") or f"exit status {outcome.returncode} (see logs)"
        m.api_calls, m.rate_limited = self.api_calls(server)
        m.rows = self.rows(case, expected)
        if m.wall_s:
            m.rows_per_s = round(m.rows / m.wall_s, 2)
        if m.api_calls is not None and m.rows:
            m.api_calls_per_row = round(m.api_calls / m.rows, 5)
        if m.success:
            try:
                m.checks |= self.verify(url, server, case, expected, counters, ctx.schema)
            except AssertionError as exc:
                m.success, m.error = False, f"wrong end state: {exc}"
        return m


def _preference(m: Measurement) -> tuple[bool, float]:
    """Of several attempts keep a successful one, and of those the least disturbed."""
    return (not m.success, m.foreign_cores or 0.0)


def _brief(m: Measurement) -> str:
    if not m.success:
        return f"FAILED: {m.error}"
    parts = [f"{m.wall_s:.2f} s", f"{m.rows_per_s:,.0f} rows/s"]
    if m.api_calls is not None:
        parts.append(f"{m.api_calls} calls")
    parts += [f"{m.peak_rss_mb:.0f} MB", f"others {m.foreign_cores} cores", f"load {m.load1_start}"]
    return ", ".join(parts)
