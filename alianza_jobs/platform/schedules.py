"""A task's schedule: the cron for this environment (its ``ALIANZA_CRON_<JOB>`` override, else the
environment's cron, else the default), a tick skipped while a run of its job is still in progress
(the overlap guard), and a time-partitioned job run for its last complete partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    schedule,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._utils.schedules import is_valid_cron_string

from alianza_jobs.platform.tags import TAG_CRON, TAG_SCHEDULED_TIME, TAG_TRIGGER
from alianza_jobs.settings import CRON_OVERRIDE_PREFIX, Settings, SettingsError

if TYPE_CHECKING:
    from alianza_jobs.platform.task import TaskSpec

IN_PROGRESS_STATUSES = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)


def task_schedule(
    spec: TaskSpec, target: JobDefinition | UnresolvedAssetJobDefinition, settings: Settings
) -> ScheduleDefinition:
    """``spec``'s schedule of ``target`` on the cron for this environment (``TaskSpec.schedule``)."""
    cron = spec.cron_for(settings)
    if cron is None:
        raise ValueError(f"{spec.name} is manual-only: it has no schedule")
    partitions_def = target.partitions_def
    job_name = spec.name

    @schedule(
        name=f"{spec.name}_schedule",
        cron_schedule=cron,
        job=target,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Runs {spec.name} on `{cron}` (UTC). Skips a tick while a run is active.",
        tags={TAG_CRON: cron, TAG_TRIGGER: "schedule", "owner": spec.owner},
    )
    def _schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        blocking = context.instance.get_runs(
            filters=RunsFilter(job_name=job_name, statuses=list(IN_PROGRESS_STATUSES)),
            limit=1,
        )
        if blocking:
            run = blocking[0]
            return SkipReason(
                f"run {run.run_id} of {job_name} is still {run.status.value.lower()}; "
                "skipping this tick rather than running alongside it"
            )
        scheduled = context.scheduled_execution_time
        tags = {TAG_CRON: cron}
        if scheduled:
            tags[TAG_SCHEDULED_TIME] = scheduled.isoformat()
        partition_key = None
        if isinstance(partitions_def, TimeWindowPartitionsDefinition) and scheduled:
            # A 02:00 report covers the last *complete* day, i.e. yesterday.
            partition_key = last_complete_partition(partitions_def, scheduled)
        return RunRequest(tags=tags, partition_key=partition_key)

    return _schedule


def cron_for(spec: TaskSpec, settings: Settings) -> str | None:
    """The cron for this environment: an ``ALIANZA_CRON_<JOB>`` override, else the env's, else ours."""
    override = cron_override(settings, spec.name)
    if override is not None:
        if spec.cron is None:
            variable = f"{CRON_OVERRIDE_PREFIX}{spec.name.upper()}"
            raise SettingsError(f"{variable}={override!r}: {spec.name} is manual-only")
        return override
    return spec.env_crons.get(settings.env.value, spec.cron)


def last_complete_partition(
    partitions_def: TimeWindowPartitionsDefinition, at: datetime
) -> str | None:
    """The newest partition whose window has ended by ``at`` (the one before ``at``'s own window)."""
    current = partitions_def.time_window_for_partition_key(
        partitions_def.get_partition_key_for_timestamp(at.timestamp())
    )
    previous = partitions_def.get_prev_partition_window(current.start)
    if previous is None:
        return None
    return partitions_def.get_partition_key_for_timestamp(previous.start.timestamp())


def check_cron_overrides(
    settings: Settings, job_names: Sequence[str], scheduled: Sequence[str] | None = None
) -> None:
    """An ``ALIANZA_CRON_<JOB>`` naming no job, or a manual-only one (not in ``scheduled``), is a
    mistake that would silently change nothing."""
    known = set(job_names)
    for name, value in settings.cron_overrides.items():
        if name not in known:
            raise SettingsError(
                f"{CRON_OVERRIDE_PREFIX}{name.upper()}={value!r} names no job "
                f"(jobs: {', '.join(sorted(known))})"
            )
        if scheduled is not None and name not in scheduled:
            raise SettingsError(
                f"{CRON_OVERRIDE_PREFIX}{name.upper()}={value!r}: {name} is manual-only"
            )
        cron_override(settings, name)


def cron_override(settings: Settings, job_name: str) -> str | None:
    """The job's ``ALIANZA_CRON_<JOB>`` value, if set; an invalid cron is a one-line error."""
    override = settings.cron_overrides.get(job_name)
    if override is not None and not is_valid_cron_string(override):
        variable = f"{CRON_OVERRIDE_PREFIX}{job_name.upper()}"
        raise SettingsError(f"{variable}={override!r} is not a valid cron expression")
    return override
