"""Code location: how long importing ``alianza_jobs.definitions`` takes (every run, the UI, the
daemon and the CLI pay it), and the wall time of ``alianza-jobs run health_check`` as a user sees it
(interpreter start, code location load, the run through the Dagster instance, exit).

The health check runs against the socket emulator (no added latency) and a migrated, empty
database; one unmeasured run first creates the instance's storage, as any deployed instance has.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.harness import ChildOutcome, EmulatorServer, child_command, run_process
from benchmarks.workloads.base import (
    Context,
    EmulatorSettings,
    Measurement,
    Workload,
    maybe_emulator,
    production_env,
)

IMPORT = "import alianza_jobs.definitions"
HEALTH_CHECK = "alianza-jobs run health_check"


class CodeLocation(Workload):
    name = "code_location"
    title = "Code location"
    data = (
        "`import alianza_jobs.definitions` in a fresh interpreter (wall: the import alone); "
        "`alianza-jobs run health_check --json` (wall: the whole process, as a user waits for it), "
        "against the socket emulator with no added latency and a migrated empty database."
    )
    emulator = EmulatorSettings(latency_ms=0)
    timeout_s = 300.0

    def execute(self, ctx: Context) -> list[Measurement]:
        measurements: list[Measurement] = []
        with maybe_emulator(self.emulator, ctx, self.name) as server, ctx.databases.empty() as url:
            assert server is not None
            self._health_check(ctx, server, url, repetition=-1)  # warm-up: creates the storage
            for repetition in range(ctx.repeat):
                measurements.append(self._import(ctx, server, url, repetition))
                measurements.append(self._health_check(ctx, server, url, repetition))
        return measurements

    def _run(self, ctx: Context, server: EmulatorServer, cmd: list[str], url: str) -> ChildOutcome:
        ctx.quiet.wait([server.pid], ctx.log)
        return run_process(
            cmd,
            env=production_env(ctx, url, server),
            timeout_s=self.timeout_s,
            log_path=ctx.work_dir / "logs" / f"{self.name}-{ctx.backend}.log",
            helper_pids=[server.pid],
        )

    def _base(self, ctx: Context, case: str, repetition: int, outcome: ChildOutcome) -> Measurement:
        return Measurement(
            workload=self.name,
            backend=ctx.backend,
            case=case,
            size=None,
            repetition=repetition,
            success=outcome.returncode == 0 and not outcome.timed_out,
            process_s=outcome.process_s,
            peak_rss_mb=outcome.peak_rss_mb,
            cpu_s=outcome.cpu_s,
            foreign_cores=outcome.foreign_cores,
            load1_start=outcome.load1_start,
            load1_end=outcome.load1_end,
        )

    def _import(
        self, ctx: Context, server: EmulatorServer, url: str, repetition: int
    ) -> Measurement:
        outcome = self._run(ctx, server, child_command("import", "alianza_jobs.definitions"), url)
        m = self._base(ctx, IMPORT, repetition, outcome)
        m.wall_s = outcome.report.get("wall_s")
        m.success = m.success and bool(outcome.report.get("success"))
        if not m.success:
            m.error = outcome.report.get("error") or f"exit status {outcome.returncode}"
        ctx.log(f"  {self.name}/{ctx.backend} import #{repetition + 1}: {m.wall_s} s")
        return m

    def _health_check(
        self, ctx: Context, server: EmulatorServer, url: str, repetition: int
    ) -> Measurement:
        # `alianza-jobs run health_check --json`, in a child that reads its own peak RSS.
        outcome = self._run(ctx, server, child_command("cli", "run health_check --json"), url)
        m = self._base(ctx, HEALTH_CHECK, repetition, outcome)
        m.wall_s = outcome.process_s
        result = _job_result(outcome.stdout)
        if result is not None:
            m.counters = {"run_duration_ms": result.get("duration_ms")}
            m.success = m.success and bool(result.get("success"))
            m.error = result.get("error")
        else:
            m.success = False
        if not m.success and m.error is None:
            m.error = f"exit status {outcome.returncode} (see logs)"
        if repetition >= 0:
            ctx.log(f"  {self.name}/{ctx.backend} health_check #{repetition + 1}: {m.wall_s} s")
        elif not m.success:
            ctx.log(f"  {self.name}/{ctx.backend} health_check warm-up failed: {m.error}")
        return m


def _job_result(stdout: str) -> dict[str, Any] | None:
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and parsed.get("type") == "job_result":
            return parsed
    return None
