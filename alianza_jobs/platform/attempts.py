"""What the task wrapper knows of one attempt: the logger bound to its run (run id, job, cron,
scheduled time, partition), its attempt number, and the task's counters as fields of the closing
line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagster import AssetExecutionContext, OpExecutionContext
from dagster._core.errors import DagsterInvalidPropertyError

from alianza_jobs.logs import TaskLogger
from alianza_jobs.platform.tags import TAG_CRON, TAG_SCHEDULED_TIME

if TYPE_CHECKING:
    from alianza_jobs.platform.task import TaskReport


def run_logger(context: OpExecutionContext | AssetExecutionContext, task: str) -> TaskLogger:
    """The logger for this run: run id (the execution id), job, cron, scheduled time."""
    fields: dict[str, Any] = {"task": task}
    try:
        run = context.run
        fields |= {"run_id": run.run_id, "job": run.job_name}
        tags = run.tags
    except DagsterInvalidPropertyError:
        # Invoked directly (build_op_context): there is no run to describe.
        tags = {}
    for tag, name in ((TAG_CRON, "cron"), (TAG_SCHEDULED_TIME, "scheduled_time")):
        if tag in tags:
            fields[name] = tags[tag]
    if context.has_partition_key:
        fields["partition"] = context.partition_key
    return TaskLogger(fields, dagster_log=context.log)


def attempt_of(context: OpExecutionContext | AssetExecutionContext) -> int:
    """1 for the first try, 2 for the first retry; 1 when invoked directly (no step, no retries)."""
    try:
        return context.retry_number + 1
    except AttributeError:
        return 1


_SUMMARY_FIELDS = frozenset(
    {
        "level",
        "msg",
        "totalDuration",
        "totalJobs",
        "successCount",
        "failureCount",
        "outcome",
        "error",
    }
)


def counter_fields(report: TaskReport | None) -> dict[str, int]:
    """A task's counters for the summary line; one named like a summary field gets a prefix."""
    if report is None:
        return {}
    return {(f"count_{k}" if k in _SUMMARY_FIELDS else k): v for k, v in report.counts.items()}
