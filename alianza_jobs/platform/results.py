"""A job's result (``JobResult``), read back from a finished Dagster run in the instance's storage."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from alianza_jobs.redaction import redact

_DOTTED_CLASS = re.compile(r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*: )")


@dataclass(frozen=True)
class JobResult:
    job_name: str
    success: bool
    duration_ms: float
    error: str | None
    retry_count: int
    run_id: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    total_duration_ms: float
    total_jobs: int
    success_count: int
    failure_count: int

    @classmethod
    def of(cls, results: Sequence[JobResult], total_duration_ms: float) -> Summary:
        ok = sum(1 for r in results if r.success)
        return cls(round(total_duration_ms, 1), len(results), ok, len(results) - ok)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_result(instance: DagsterInstance, run_id: str) -> JobResult:
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise LookupError(f"run {run_id} is not in this instance")
    stats = instance.get_run_stats(run_id)
    duration_ms = (
        round((stats.end_time - stats.start_time) * 1000, 1)
        if stats.start_time and stats.end_time
        else 0.0
    )
    retries = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY
    ).records
    return JobResult(
        job_name=run.job_name,
        success=run.status == DagsterRunStatus.SUCCESS,
        duration_ms=duration_ms,
        error=None if run.status == DagsterRunStatus.SUCCESS else _error_of(instance, run_id),
        retry_count=len(retries),
        run_id=run_id,
    )


def _error_of(instance: DagsterInstance, run_id: str) -> str:
    for event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE):
        records = instance.get_records_for_run(run_id, of_type=event_type, ascending=False).records
        for record in records:
            dagster_event = record.event_log_entry.dagster_event
            if dagster_event is None:
                continue
            data = dagster_event.event_specific_data
            error = getattr(data, "error", None)
            if error is not None:
                # Dagster wraps the task's exception ("Exceeded max_retries", "Error occurred while
                # executing op"): the innermost cause is what went wrong.
                while error.cause is not None:
                    error = error.cause
                return redact(_DOTTED_CLASS.sub(r"\1", error.message.strip()))
            if dagster_event.message:
                return redact(dagster_event.message)
    return "run did not succeed"
