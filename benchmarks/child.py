"""One measured run, in a process of its own (so its peak RSS is its own): ``python -m
benchmarks.child {ours|baseline|import|cli} TARGET [--run-config JSON] --result FILE``.

The parent sets the environment as production would have it (``ALIANZA_ENV=prod``, ``DATABASE_URL``,
the API base URLs of the socket emulator, tokens, ``DAGSTER_HOME``). This process imports what it
needs first, then times only the run itself, and writes a JSON report to ``--result``:

* ``ours``: the real job, ``execute_in_process`` against the Dagster instance in ``DAGSTER_HOME``
  (the code location's job, with the code location's resources, when the job is registered there;
  else the task module's job with the same ``build_resources``). Counters come from the op's
  output metadata.
* ``baseline``: the TypeScript package's task from :mod:`benchmarks.baseline`.
* ``import``: how long importing the code location takes (``alianza_jobs.definitions``).
* ``cli``: ``alianza-jobs ARGUMENTS`` run in this process, so its peak RSS can be read too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil


def _rss_mb() -> float:
    return round(float(psutil.Process().memory_info().rss) / (1024 * 1024), 1)


def _peak_rss_mb() -> float:
    """This process's peak RSS since it exec'd: ``VmHWM`` of its own address space.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries the high-water mark of the address space
    replaced by ``execve`` into it, and a child started by ``vfork`` (as ``subprocess`` does)
    borrows its parent's, so a child of a large parent would report the parent's peak as its own.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextlib.contextmanager
def _profiled() -> Iterator[None]:
    """With ``ALIANZA_BENCH_PROFILE=FILE``, profile the measured call with pyinstrument (a
    development tool, not a dependency: ``pip install pyinstrument``) and write its text report."""
    target = os.environ.get("ALIANZA_BENCH_PROFILE")
    if not target:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        show_all = os.environ.get("ALIANZA_BENCH_PROFILE_ALL") == "1"
        Path(target).write_text(profiler.output_text(unicode=True, show_all=show_all))


def _plain(value: Any) -> Any:
    """Dagster metadata values as JSON-able Python values."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def run_ours(job_name: str, run_config: dict[str, Any]) -> dict[str, Any]:
    import_started = time.perf_counter()
    from dagster import DagsterEventType, DagsterInstance

    definitions = importlib.import_module("alianza_jobs.definitions")
    job = definitions.defs.resolve_job_def(job_name)
    via = "code location"
    instance = DagsterInstance.get()
    import_s = time.perf_counter() - import_started
    rss_before = _rss_mb()

    started = time.perf_counter()
    with _profiled():
        result = job.execute_in_process(
            run_config=run_config or None,
            instance=instance,
            raise_on_error=False,
        )
    wall_s = time.perf_counter() - started

    metadata: dict[str, Any] = {}
    failure: str | None = None
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_OUTPUT and event.step_output_data:
            metadata.update(
                {k: _plain(v.value) for k, v in event.step_output_data.metadata.items()}
            )
        elif event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data:
            error = event.step_failure_data.error
            failure = error.message.strip() if error else "step failed"
    return {
        "success": result.success,
        "error": None if result.success else (failure or "run failed"),
        "wall_s": round(wall_s, 4),
        "import_s": round(import_s, 3),
        "rss_before_mb": rss_before,
        "run_id": result.run_id,
        "via": via,
        "counters": metadata,
    }


def run_baseline(task: str) -> dict[str, Any]:
    from benchmarks import baseline

    baseline.configure_logging(os.environ.get("LOG_LEVEL", "info"))
    rss_before = _rss_mb()
    env = dict(os.environ)
    database_url = env["DATABASE_URL"]
    try:
        with _profiled():
            counters, wall_s = asyncio.run(baseline.run(task, database_url=database_url, env=env))
    except Exception as exc:  # reported, not raised: the parent decides what a failure means
        return {"success": False, "error": f"{type(exc).__name__}: {exc}", "wall_s": None}
    return {
        "success": True,
        "error": None,
        "wall_s": round(wall_s, 4),
        "rss_before_mb": rss_before,
        "counters": counters.as_dict(),
    }


def run_cli(arguments: str) -> dict[str, Any]:
    """``alianza-jobs ARGUMENTS`` in this process (its output goes to stdout as usual)."""
    import shlex

    from alianza_jobs.cli import cli

    started = time.perf_counter()
    try:
        cli.main(args=shlex.split(arguments), obj={}, prog_name="alianza-jobs")
        code: int | str | None = 0
    except SystemExit as exit_:
        code = exit_.code
    sys.stdout.flush()
    ok = code in (0, None)
    return {
        "success": ok,
        "error": None if ok else f"exit status {code}",
        "wall_s": round(time.perf_counter() - started, 4),
    }


def run_import(module: str) -> dict[str, Any]:
    started = time.perf_counter()
    importlib.import_module(module)
    return {"success": True, "error": None, "wall_s": round(time.perf_counter() - started, 4)}


def _preload() -> str | None:
    """``ALIANZA_BENCH_PRELOAD=benchmarks.experiments.NAME``: apply that experiment first."""
    name = os.environ.get("ALIANZA_BENCH_PRELOAD")
    if not name:
        return None
    importlib.import_module(name).apply()
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    parser.add_argument("impl", choices=["ours", "baseline", "import", "cli"])
    parser.add_argument(
        "target", help="job name (ours, baseline), module (import) or alianza-jobs arguments (cli)"
    )
    parser.add_argument("--run-config", default="{}", help="run config as JSON (ours)")
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args(argv)
    experiment = _preload()
    if args.impl == "ours":
        run_config = json.loads(args.run_config)
        # An experiment's run config (``ALIANZA_BENCH_RUN_CONFIG``), on top of the workload's.
        run_config |= json.loads(os.environ.get("ALIANZA_BENCH_RUN_CONFIG") or "{}")
        report = run_ours(args.target, run_config)
        report["run_config"] = run_config or None
    elif args.impl == "baseline":
        report = run_baseline(args.target)
    elif args.impl == "cli":
        report = run_cli(args.target)
    else:
        report = run_import(args.target)
    report["peak_rss_mb"] = _peak_rss_mb()
    report["experiment"] = experiment
    args.result.write_text(json.dumps(report, default=str))
    return 0 if report.get("success") else 1


if __name__ == "__main__":
    sys.exit(main())
