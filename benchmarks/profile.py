"""Profile one run of a workload exactly as the benchmark measures it:
``python -m benchmarks.profile WORKLOAD --size N [--impl ours|baseline] [--backend sqlite|postgres]
[--schema default|drizzle] [--out FILE]``.

Same emulator settings, same generated data, same child process; the measured call runs under
pyinstrument (``pip install pyinstrument``: a development tool, not a dependency) and its text
report goes to ``--out`` (default ``profile-WORKLOAD-IMPL-SIZE-BACKEND[-SCHEMA].txt`` in the
current directory). This is how a missed target is looked into before anything is changed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.harness import (
    DEFAULT_SCHEMA,
    PLATFORM_SCHEMAS,
    Databases,
    PostgresDatabases,
    Quiet,
    SqliteDatabases,
    child_command,
    dagster_home,
    run_process,
    scratch_dir,
)
from benchmarks.workloads import WORKLOADS
from benchmarks.workloads.base import (
    Case,
    Context,
    QueueWorkload,
    maybe_emulator,
    production_env,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    queue_workloads = sorted(n for n, w in WORKLOADS.items() if isinstance(w, QueueWorkload))
    parser.add_argument("workload", choices=queue_workloads)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--impl", choices=["ours", "baseline"], default="ours")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--schema",
        choices=list(PLATFORM_SCHEMAS),
        default=DEFAULT_SCHEMA.name,
        help="the platform schema of the data (drizzle: Postgres only)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    assert isinstance(workload, QueueWorkload)
    schema = PLATFORM_SCHEMAS[args.schema]
    if schema.name not in workload.schemas or args.backend not in schema.backends:
        parser.error(f"{args.workload} does not run on the {schema.name} schema on {args.backend}")
    suffix = "" if schema is DEFAULT_SCHEMA else f"-{schema.name}"
    out = (
        args.out
        or Path(
            f"profile-{args.workload}-{args.impl}-{args.size}-{args.backend}{suffix}.txt"
        ).resolve()
    )
    work_dir = scratch_dir("alianza-bench-profile-")
    databases: Databases = (
        SqliteDatabases(work_dir / "sqlite") if args.backend == "sqlite" else PostgresDatabases()
    )
    ctx = Context(
        databases=databases,
        work_dir=work_dir,
        dagster_home=dagster_home(work_dir / "dagster_home"),
        repeat=1,
        smoke=False,
        quiet=Quiet(),
        log=lambda message: print(message, file=sys.stderr),
        schema=schema,
    )
    case = Case(args.impl, args.size)
    try:
        with maybe_emulator(workload.emulator, ctx, workload.name) as server:

            async def populate(engine: AsyncEngine) -> dict[str, Any]:
                return await workload.populate(engine, args.size, False, schema)

            expected = databases.template("profile", populate, schema)
            with databases.copy("profile") as url:
                workload.prepare(server, args.size, expected)
                env = production_env(ctx, url, server)
                env["ALIANZA_BENCH_PROFILE"] = str(out)
                outcome = run_process(
                    child_command(args.impl, workload.job, run_config=workload.run_config(case)),
                    env=env,
                    timeout_s=workload.timeout_s,
                    log_path=work_dir / "profile.log",
                )
                report = outcome.report
                print(
                    f"{args.workload} {case.label} on {ctx.where}: success={report.get('success')} "
                    f"wall={report.get('wall_s')} s, peak RSS {outcome.peak_rss_mb} MB; "
                    f"profile in {out}"
                )
                if not report.get("success"):
                    print(report.get("error"), file=sys.stderr)
                    return 1
    finally:
        databases.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
