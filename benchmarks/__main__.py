"""``python -m benchmarks [--smoke] [--repeat N] [--only WORKLOAD] [--triggers]
[--backend sqlite|postgres|both] [--schema default|drizzle|both] [--out DIR] [--merge]``: run the
benchmark suite and write ``latest.json`` and ``latest.md``.

``--triggers`` adds the trigger workloads (``idle``, ``latency``: whole deployments measured over
minutes), which a plain or ``--smoke`` run leaves out unless they are named with ``--only``.

``--schema``: which platform schema the video and email queues' data is in: the local stand-in
(``default``), the tables the platform's Drizzle ORM makes (``drizzle``: Postgres only, read
through its schema map), or each in turn (``both``). Workloads that have no Drizzle variant run
on the default schema only, and are left out of a ``drizzle``-only run.

Exit status: 0 when every run succeeded and left the right end state, 1 when one did not (the
results are written either way), 2 for a usage error (such as Postgres asked for but not there).
Targets are reported, never asserted: a slow machine is not a broken build.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    PLATFORM_SCHEMAS,
    REPO,
    Databases,
    PlatformSchema,
    PostgresDatabases,
    Quiet,
    SqliteDatabases,
    dagster_home,
    load1,
    machine_info,
    median,
    scratch_dir,
    write_atomically,
)
from benchmarks.report import render
from benchmarks.workloads import WORKLOADS, Workload
from benchmarks.workloads.base import Context
from benchmarks.workloads.summary import summarize

RESULTS_DIR = REPO / "benchmarks" / "results"


def _log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; smoke 1)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(WORKLOADS),
        help="run only this workload (repeatable)",
    )
    parser.add_argument(
        "--triggers",
        action="store_true",
        help="also run the trigger workloads (idle, latency; SQLite only, minutes each), "
        "which are left out unless named with --only",
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--schema",
        choices=[*PLATFORM_SCHEMAS, "both"],
        default="default",
        help="the platform schema of the video and email queues' data: the stand-in (default), "
        "the Drizzle-made one (Postgres only), or both side by side",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where latest.json/latest.md go (default: benchmarks/results; smoke: a temp dir)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other workloads/backends of an existing latest.json in --out",
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=None,
        help="seconds to wait before each run for other processes to use < 0.4 cores "
        "(default 600; smoke 0 = never wait)",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=None,
        help="tries per run when others used > 0.6 cores meanwhile (default 3; smoke 1)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch dir (logs)")
    parser.add_argument("--note", action="append", default=[], help="a note for the report")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def _backends(choice: str) -> list[str]:
    return ["sqlite", "postgres"] if choice == "both" else [choice]


def _schemas(choice: str) -> list[str]:
    return list(PLATFORM_SCHEMAS) if choice == "both" else [choice]


def _runs_on(workload: Workload, backend: str, schemas: Sequence[str]) -> list[PlatformSchema]:
    """The platform schemas ``workload`` runs on, on ``backend``, of those asked for."""
    if backend not in workload.backends:
        return []
    return [
        PLATFORM_SCHEMAS[name]
        for name in schemas
        if name in workload.schemas and backend in PLATFORM_SCHEMAS[name].backends
    ]


def _selected(only: Sequence[str] | None, triggers: bool) -> list[Workload]:
    """``--only``'s workloads, else those of a default run; ``--triggers`` adds the long ones."""
    names = list(only or [n for n, w in WORKLOADS.items() if w.in_default_run])
    if triggers:
        names += [n for n, w in WORKLOADS.items() if not w.in_default_run and n not in names]
    return [WORKLOADS[name] for name in names]


def _databases(backend: str, work_dir: Path) -> Databases:
    if backend == "sqlite":
        return SqliteDatabases(work_dir / "sqlite")
    return PostgresDatabases()


def _load_summary(
    measurements: Sequence[dict[str, Any]], start: float, end: float
) -> dict[str, Any]:
    loads = [m["load1_start"] for m in measurements if m.get("load1_start") is not None]
    foreign = [m["foreign_cores"] for m in measurements if m.get("foreign_cores") is not None]
    return {
        "start": start,
        "end": end,
        "runs_median": median(loads),
        "runs_max": max(loads, default=None),
        "foreign_median": median(foreign),
        "foreign_max": max(foreign, default=None),
    }


def _targets(summaries: Sequence[dict[str, Any]], backends: Sequence[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, workload in WORKLOADS.items():
        for backend in backends:
            for schema in PLATFORM_SCHEMAS:
                mine = [
                    s
                    for s in summaries
                    if s["workload"] == name
                    and s["backend"] == backend
                    and s.get("schema", "default") == schema
                ]
                if mine:
                    targets = workload.targets(backend, mine)
                    out += [{**t.as_dict(), "schema": schema} for t in targets]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    selected = _selected(args.only, args.triggers)
    # A backend none of the selected workloads runs on is not asked for (nor checked for).
    asked = _backends(args.backend)
    backends = [b for b in asked if any(b in w.backends for w in selected)]
    schemas = _schemas(args.schema)
    notes: list[str] = list(args.note)
    if "postgres" in backends:
        problem = PostgresDatabases.available()
        if problem is not None:
            if args.smoke and os.environ.get("ALIANZA_REQUIRE_POSTGRES") != "1":
                notes.append(f"Postgres skipped: {problem}")
                backends.remove("postgres")
                _log(f"Postgres not available ({problem}): SQLite only")
            else:
                print(f"error: Postgres not available: {problem}", file=sys.stderr)
                return 2
    if not any(_runs_on(w, b, schemas) for w in selected for b in backends):
        print(
            f"error: nothing to run: --schema {args.schema} on {', '.join(asked)} "
            f"for {', '.join(w.name for w in selected)}",
            file=sys.stderr,
        )
        return 2
    out_dir: Path = args.out or (
        Path(tempfile.mkdtemp(prefix="alianza-bench-smoke-")) if args.smoke else RESULTS_DIR
    )
    quiet = Quiet(
        timeout_s=args.quiet_timeout
        if args.quiet_timeout is not None
        else (0 if args.smoke else 600),
        max_attempts=args.attempts or (1 if args.smoke else 3),
    )
    work_dir = scratch_dir()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    load_start = load1()
    _log(
        f"benchmarks: {', '.join(w.name for w in selected)} on {', '.join(backends)}, "
        f"platform schema {', '.join(schemas)}, {args.repeat} repetition(s); scratch {work_dir}"
    )
    measurements: list[dict[str, Any]] = []
    ran_schemas: set[str] = set()
    ran: list[Workload] = []
    try:
        for workload in selected:
            for backend in backends:
                on = _runs_on(workload, backend, schemas)
                if not on:
                    _log(f"{workload.name} on {backend}: not on schema {', '.join(schemas)}")
                    continue
                home = dagster_home(work_dir / f"dagster_home-{backend}")
                databases = _databases(backend, work_dir)
                try:
                    for schema in on:
                        _log(f"{workload.name} on {backend}, {schema.name} platform schema")
                        ctx = Context(
                            databases=databases,
                            work_dir=work_dir,
                            dagster_home=home,
                            repeat=args.repeat,
                            smoke=args.smoke,
                            quiet=quiet,
                            log=_log,
                            schema=schema,
                        )
                        measurements += [m.as_dict() for m in workload.execute(ctx)]
                        ran_schemas.add(schema.name)
                        if workload not in ran:
                            ran.append(workload)
                finally:
                    databases.close()
    finally:
        if args.keep_work:
            _log(f"scratch kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    results: dict[str, Any] = {
        "generated_at": started_at.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])]),
        "smoke": args.smoke,
        "repeat": args.repeat,
        "backends": backends,
        "schemas": [name for name in PLATFORM_SCHEMAS if name in ran_schemas],
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "workloads": {
            w.name: {
                "title": w.title,
                "data": w.data,
                "emulator": w.emulator.describe() if w.emulator else None,
                "generated_at": started_at.isoformat(timespec="seconds"),
            }
            for w in ran
        },
        "notes": notes,
    }
    latest = out_dir / "latest.json"
    if args.merge and latest.exists():
        results, measurements = _merge(json.loads(latest.read_text()), results, measurements)
    results["measurements"] = measurements
    results["summaries"] = summaries = summarize(measurements)
    results["targets"] = _targets(summaries, results["backends"])
    results["load"] = _load_summary(measurements, load_start, load1())
    write_atomically(latest, json.dumps(results, indent=2) + "\n")
    write_atomically(out_dir / "latest.md", render(results))
    failed = [m for m in measurements if not m["success"] and m["repetition"] >= 0]
    _log(f"wrote {latest} and latest.md; {len(failed)} failed run(s)")
    return 1 if failed else 0


def _merge(
    old: dict[str, Any], new: dict[str, Any], measurements: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The old results with the (workload, backend, schema) triples just measured replaced by the
    new ones (results from before ``--schema`` existed are on the default schema)."""

    def where(m: dict[str, Any]) -> tuple[str, str, str]:
        return m["workload"], m["backend"], m.get("schema", "default")

    fresh = {where(m) for m in measurements}
    kept = [m for m in old.get("measurements", []) if where(m) not in fresh]
    merged = dict(new)
    merged["workloads"] = {**old.get("workloads", {}), **new["workloads"]}
    merged["backends"] = sorted(set(old.get("backends", [])) | set(new["backends"]), reverse=True)
    schemas = set(old.get("schemas", ["default"])) | set(new["schemas"])
    merged["schemas"] = [name for name in PLATFORM_SCHEMAS if name in schemas]
    merged["notes"] = list(dict.fromkeys([*old.get("notes", []), *new["notes"]]))
    merged["duration_s"] = round(old.get("duration_s", 0.0) + new["duration_s"], 1)
    merged["command"] = f"{old.get('command', '?')}; {new['command']}"
    merged["generated_at"] = old.get("generated_at", new["generated_at"])
    return merged, kept + measurements


if __name__ == "__main__":
    sys.exit(main())
