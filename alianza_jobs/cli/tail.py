"""``alianza-jobs tail``: follow the jobs' log lines, reading the Dagster instance's event storage.

It reads run records through ``DagsterInstance`` (SQLite or Postgres, whatever ``DAGSTER_HOME``'s
``dagster.yaml`` says), never log files, so it sees exactly what the UI's run page sees: our task lines
(with their ``key=value`` fields parsed back out) and Dagster's own events (step start, retries,
failures).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
from dagster import DagsterInstance, DagsterRun, EventLogRecord, RunsFilter

from alianza_jobs.logs import parse_logfmt_suffix
from alianza_jobs.platform.instance import get_instance

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


@dataclass
class _RunCursor:
    run: DagsterRun
    cursor: str | None = None
    done: bool = False
    seen: set[int] = field(default_factory=set)


def _level_no(level: str | int) -> int:
    return level if isinstance(level, int) else LEVELS.get(level.lower(), logging.INFO)


def _line(record: EventLogRecord) -> dict[str, Any]:
    entry = record.event_log_entry
    event = entry.dagster_event
    text, fields = parse_logfmt_suffix(entry.user_message) if event is None else (entry.message, {})
    line: dict[str, Any] = {
        "ts": datetime.fromtimestamp(entry.timestamp, UTC).isoformat(timespec="milliseconds"),
        "level": logging.getLevelName(_level_no(entry.level)).lower(),
        "run_id": entry.run_id,
        "job": entry.job_name,
        "step": entry.step_key,
        "event": event.event_type_value if event else "log",
        "msg": text,
    }
    error = getattr(event.event_specific_data, "error", None) if event else None
    if error is not None:
        # Dagster wraps the task's exception; the innermost cause says what went wrong.
        while error.cause is not None:
            error = error.cause
        line["error"] = error.message.strip()
    for key, value in fields.items():
        line.setdefault(key, value)
    return line


def _human(line: dict[str, Any], raw_message: str) -> str:
    ts = line["ts"][11:23]
    step = line["step"] or "-"
    event = "" if line["event"] == "log" else f"{line['event']} "
    error = (
        f"  error={json.dumps(line['error'])}" if "error" in line and line["event"] != "log" else ""
    )
    return (
        f"{ts} {line['level'].upper():<7} {line['job']} {line['run_id'][:8]} {step}  "
        f"{event}{raw_message}{error}"
    )


class Tailer:
    def __init__(
        self,
        instance: DagsterInstance,
        *,
        run_id: str | None,
        job: str | None,
        min_level: int,
        as_json: bool,
        recent_runs: int,
    ) -> None:
        self.instance = instance
        self.run_id = run_id
        self.job = job
        self.min_level = min_level
        self.as_json = as_json
        self.recent_runs = recent_runs
        self.runs: dict[str, _RunCursor] = {}
        self.started = time.time()

    def discover(self, initial: bool) -> None:
        if self.run_id:
            if self.run_id not in self.runs:
                run = self.instance.get_run_by_id(self.run_id)
                if run is None:
                    raise click.ClickException(
                        f"no run {self.run_id} in {self.instance.root_directory}"
                    )
                self.runs[run.run_id] = _RunCursor(run)
            return
        if initial:
            runs = self.instance.get_runs(RunsFilter(job_name=self.job), limit=self.recent_runs)
        else:
            # Runs that started after we did (plus a margin for clock skew between processes).
            since = datetime.fromtimestamp(self.started - 5, UTC)
            runs = self.instance.get_runs(
                RunsFilter(job_name=self.job, created_after=since), limit=100
            )
        for run in reversed(runs):
            self.runs.setdefault(run.run_id, _RunCursor(run))

    def poll(self) -> list[EventLogRecord]:
        fresh: list[EventLogRecord] = []
        for state in self.runs.values():
            if state.done:
                continue
            finished = self._is_finished(state.run.run_id)
            connection = self.instance.get_records_for_run(state.run.run_id, cursor=state.cursor)
            state.cursor = connection.cursor
            for record in connection.records:
                if record.storage_id not in state.seen:
                    state.seen.add(record.storage_id)
                    fresh.append(record)
            # Read once more after the run ended, so the last events are not lost to a race.
            state.done = finished and not connection.records
        return sorted(fresh, key=lambda r: (r.event_log_entry.timestamp, r.storage_id))

    def _is_finished(self, run_id: str) -> bool:
        run = self.instance.get_run_by_id(run_id)
        return run is not None and run.is_finished

    def emit(self, records: Iterable[EventLogRecord]) -> None:
        for record in records:
            entry = record.event_log_entry
            if _level_no(entry.level) < self.min_level:
                continue
            line = _line(record)
            if self.as_json:
                click.echo(json.dumps(line, ensure_ascii=False))
            else:
                click.echo(_human(line, entry.message))

    @property
    def all_done(self) -> bool:
        return bool(self.runs) and all(s.done for s in self.runs.values())


@click.command("tail")
@click.option("--run", "run_id", help="Only this run (its id, the execution id).")
@click.option("--job", help="Only runs of this job.")
@click.option(
    "--level",
    type=click.Choice(list(LEVELS)),
    default="info",
    show_default=True,
    help="Lowest level shown (Dagster's step events are debug).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines, from new runs too.")
@click.option(
    "--runs", "recent_runs", default=5, show_default=True, help="Recent runs to show first."
)
@click.option("--interval", default=0.25, show_default=True, help="Seconds between polls.")
def tail_command(
    run_id: str | None,
    job: str | None,
    level: str,
    as_json: bool,
    follow: bool,
    recent_runs: int,
    interval: float,
) -> None:
    """Print run log lines from the instance in DAGSTER_HOME, optionally following new ones."""
    tailer = Tailer(
        get_instance(),
        run_id=run_id,
        job=job,
        min_level=LEVELS[level],
        as_json=as_json,
        recent_runs=recent_runs,
    )
    tailer.discover(initial=True)
    tailer.emit(tailer.poll())
    if not follow:
        return
    click.echo(
        f"tail: following {'run ' + run_id if run_id else 'new runs'} (Ctrl-C to stop)", err=True
    )
    try:
        while not (run_id and tailer.all_done):
            time.sleep(interval)  # polling the storage, as the UI's own subscription does
            tailer.discover(initial=False)
            tailer.emit(tailer.poll())
    except KeyboardInterrupt:
        pass
