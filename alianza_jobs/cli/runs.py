"""``jobs``, ``run`` and ``trigger``: list jobs, run one by name, run every job bound to a cron.

Runs launch through the Dagster instance in ``DAGSTER_HOME`` (``execute_job`` on a reconstructable
job), so they appear in the UI with their logs and metadata, exactly like scheduled runs.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml
from dagster import (
    DagsterInvalidConfigError,
    Definitions,
    JobDefinition,
    TimeWindowPartitionsDefinition,
    build_reconstructable_job,
    execute_job,
)

from alianza_jobs.platform.instance import get_instance
from alianza_jobs.platform.results import JobResult, Summary, job_result
from alianza_jobs.platform.tags import (
    MAX_RUNTIME_TAG,
    TAG_CRON,
    TAG_RETRIES,
    TAG_SCHEDULED_TIME,
    TAG_TIMEOUT,
    TAG_TRIGGER,
)
from alianza_jobs.settings import SettingsError


@dataclass(frozen=True)
class JobInfo:
    name: str
    cron: str | None
    timeout: str
    retries: str
    max_runtime: str
    partitioned: bool


class ConfigError(click.ClickException):
    """Bad settings or an unloadable code location: a usage error, exit 2, one line."""

    exit_code = 2


def load_defs(module: str) -> Definitions:
    # Like `dagster -m`: a module in the working directory loads without being installed.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        loaded = importlib.import_module(module)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import code location module {module!r}: {exc}") from None
    defs = getattr(loaded, "defs", None)
    if not isinstance(defs, Definitions):
        raise click.UsageError(f"module {module!r} has no `defs` Definitions")
    return defs


def load_job(module: str, name: str) -> JobDefinition:
    """Reconstructor for ``build_reconstructable_job``: a run can re-import its job by name."""
    return load_defs(module).resolve_job_def(name)


def job_infos(defs: Definitions) -> dict[str, JobInfo]:
    crons: dict[str, str] = {}
    for sched in defs.schedules or []:
        resolved = defs.resolve_schedule_def(sched.name)
        if isinstance(resolved.cron_schedule, str):
            crons[resolved.job_name] = resolved.cron_schedule
    infos: dict[str, JobInfo] = {}
    for job_def in defs.resolve_all_job_defs():
        if job_def.name.startswith("__"):
            continue  # Dagster's implicit asset job
        op_tags: dict[str, Any] = {}
        for node_def in job_def.graph.node_defs:
            op_tags.update(node_def.tags)
        infos[job_def.name] = JobInfo(
            name=job_def.name,
            cron=crons.get(job_def.name),
            timeout=f"{op_tags[TAG_TIMEOUT]} s" if TAG_TIMEOUT in op_tags else "-",
            retries=str(op_tags.get(TAG_RETRIES, "-")),
            max_runtime=f"{job_def.run_tags.get(MAX_RUNTIME_TAG, '-')} s",
            partitioned=job_def.partitions_def is not None,
        )
    return infos


@click.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.pass_obj
def jobs_command(obj: dict[str, Any], as_json: bool) -> None:
    """List every job: its cron in this environment, timeout and retry policy."""
    infos = job_infos(load_defs(obj["module"]))
    if as_json:
        for info in infos.values():
            click.echo(json.dumps(info.__dict__))
        return
    rows = [("JOB", "CRON (UTC)", "TIMEOUT", "RETRIES", "MAX RUNTIME")]
    rows += [
        (i.name, i.cron or "manual", i.timeout, i.retries, i.max_runtime) for i in infos.values()
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.command("run")
@click.argument("job_name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run config as a YAML file (e.g. ops: {replay_dead_letters: {config: {dry_run: true}}}).",
)
@click.option("--partition", help="Partition key for a partitioned job (default: the last one).")
@click.pass_obj
def run_command(
    obj: dict[str, Any],
    job_name: str,
    as_json: bool,
    config_path: Path | None,
    partition: str | None,
) -> None:
    """Run one job now, through the Dagster instance, and print its JobResult."""
    module = obj["module"]
    infos = job_infos(load_defs(module))
    if job_name not in infos:
        raise click.UsageError(f"unknown job {job_name!r}; known jobs: {', '.join(sorted(infos))}")
    run_config = yaml.safe_load(config_path.read_text()) if config_path else None
    started = time.perf_counter()
    results = [_execute(module, job_name, {TAG_TRIGGER: "cli"}, run_config, partition)]
    _finish(results, as_json, (time.perf_counter() - started) * 1000)


@click.command("trigger")
@click.option("--cron", "cron", required=True, help='Cron expression, e.g. "*/5 * * * *".')
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_obj
def trigger_command(obj: dict[str, Any], cron: str, as_json: bool) -> None:
    """Run every job bound to CRON, as its schedule would (a scheduled trigger, tested by hand)."""
    module = obj["module"]
    infos = job_infos(load_defs(module))
    names = [i.name for i in infos.values() if i.cron == cron.strip()]
    if not names:
        known = sorted({i.cron for i in infos.values() if i.cron})
        raise click.UsageError(
            f"no job is bound to cron {cron!r}; crons in use: {', '.join(known) or 'none'}"
        )
    scheduled = datetime.now(UTC).replace(second=0, microsecond=0)
    tags = {
        TAG_TRIGGER: "cli",
        TAG_CRON: cron.strip(),
        TAG_SCHEDULED_TIME: scheduled.isoformat(),
    }
    started = time.perf_counter()
    # One after another, in the order the jobs are declared.
    results = [_execute(module, name, tags, None, None) for name in names]
    _finish(results, as_json, (time.perf_counter() - started) * 1000)


def _execute(
    module: str,
    job_name: str,
    tags: dict[str, str],
    run_config: dict[str, Any] | None,
    partition: str | None,
) -> JobResult:
    instance = get_instance()
    job_def = load_job(module, job_name)
    run_tags = dict(tags)
    partitions_def = job_def.partitions_def
    if partitions_def is not None:
        if partition is None and isinstance(partitions_def, TimeWindowPartitionsDefinition):
            partition = partitions_def.get_last_partition_key()
        if partition is None:
            raise click.UsageError(f"{job_name} is partitioned: pass --partition")
        run_tags["dagster/partition"] = partition
    # Our JSON lines on stderr already narrate the run; Dagster's console logger would repeat each
    # one and add its debug events. The event log in storage is unaffected by this.
    run_config = {
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        **(run_config or {}),
    }
    recon = build_reconstructable_job(
        "alianza_jobs.cli.runs",
        "load_job",
        reconstructable_args=(module, job_name),  # type: ignore[arg-type]  # Dagster types it as a 1-tuple
    )
    try:
        with execute_job(recon, instance=instance, run_config=run_config, tags=run_tags) as result:
            run_id = result.run_id
    except DagsterInvalidConfigError as exc:
        # A typo in --config is a usage error: say which key, in one line, not a traceback.
        problems = "; ".join(" ".join(e.message.split()) for e in exc.errors) or str(exc)
        raise ConfigError(f"invalid run config for {job_name}: {problems}") from None
    return job_result(instance, run_id)


def _finish(results: list[JobResult], as_json: bool, total_ms: float) -> None:
    summary = Summary.of(results, total_ms)
    if as_json:
        for r in results:
            click.echo(json.dumps({"type": "job_result", **r.as_dict()}))
        click.echo(json.dumps({"type": "summary", **summary.as_dict()}))
    else:
        for r in results:
            mark = "ok  " if r.success else "FAIL"
            line = (
                f"{mark} {r.job_name}  {r.duration_ms:.0f} ms  retries={r.retry_count}  "
                f"run={r.run_id}"
            )
            if r.error:
                line += f"\n     error: {r.error}"
            click.echo(line)
        click.echo(
            f"Cron job execution completed: {summary.total_jobs} job(s) in "
            f"{summary.total_duration_ms:.0f} ms, {summary.success_count} succeeded, "
            f"{summary.failure_count} failed"
        )
    sys.exit(0 if summary.failure_count == 0 else 1)
