"""A task's schedule and its work sensor: the cron for this environment (its
``ALIANZA_CRON_<JOB>`` override, else the environment's cron, else the default), a tick skipped
while a run of its job is still in progress (the overlap guard) or, for a queue, when nothing is
due (its backlog probe, one query in the code server instead of a run process; the tick then
records the job's tables as current, for their freshness), and a time-partitioned job run for its
last complete partition. The sensor launches a queue's job as soon as work is due, every few
seconds, with the same guard and the same probe (one sensor for every queue: :func:`work_sensor`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetMaterialization,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    JobDefinition,
    ResourceParam,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    schedule,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._utils.schedules import is_valid_cron_string

from alianza_jobs.platform.tags import TAG_CRON, TAG_SCHEDULED_TIME, TAG_TRIGGER
from alianza_jobs.redaction import redact, secret_values
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

DEFAULT_SENSOR_INTERVAL_S = 5


@dataclass(frozen=True)
class Backlog:
    """What a queue's probe found: ``count`` items due (capped: a probe stops counting early),
    described as ``what`` ("due emails")."""

    count: int
    what: str

    def describe(self) -> str:
        return f"{self.count} {self.what}"


BacklogProbe = Callable[[Any], Backlog]
"""Given the database resource, how much work is due now: one cheap, read-only query."""


def in_progress(
    context: ScheduleEvaluationContext | SensorEvaluationContext, job: str
) -> str | None:
    """Why not to launch ``job`` now (a run of it is still in progress), or None."""
    blocking = context.instance.get_runs(
        filters=RunsFilter(job_name=job, statuses=list(IN_PROGRESS_STATUSES)), limit=1
    )
    if not blocking:
        return None
    run = blocking[0]
    return (
        f"run {run.run_id} of {job} is still {run.status.value.lower()}; "
        "skipping this tick rather than running alongside it"
    )


def ask_backlog(probe: BacklogProbe, database: Any) -> Backlog | str:
    """The probe's answer, or why it could not be had (redacted: it may quote a database URL)."""
    try:
        return probe(database)
    except Exception as exc:
        return redact(f"{type(exc).__name__}: {exc}", secret_values())


def task_schedule(
    spec: TaskSpec, target: JobDefinition | UnresolvedAssetJobDefinition, settings: Settings
) -> ScheduleDefinition:
    """``spec``'s schedule of ``target`` on the cron for this environment (``TaskSpec.schedule``)."""
    cron = spec.cron_for(settings)
    if cron is None:
        raise ValueError(f"{spec.name} is manual-only: it has no schedule")
    partitions_def = target.partitions_def
    job_name = spec.name

    # ALIANZA_EVENT_TRIGGERS=false: every tick runs, as the TypeScript package's crons did.
    probe = spec.backlog if settings.event_triggers else None
    skips = "Skips a tick while a run is active"
    if probe is not None:
        skips += " or when nothing is due (then its tables are recorded as current)"

    def evaluate(context: ScheduleEvaluationContext, database: Any) -> RunRequest | SkipReason:
        blocked = in_progress(context, job_name)
        if blocked is not None:
            return SkipReason(blocked)
        if probe is not None:
            backlog = ask_backlog(probe, database)
            if isinstance(backlog, str):
                # The cron is the safety net: a probe that cannot answer launches the run,
                # which then fails (or succeeds) in the open, with its own error.
                context.log.warning(f"{job_name}: could not ask for due work ({backlog}); running")
            elif backlog.count == 0:
                report_current(context, spec, backlog)
                return SkipReason(f"nothing due: {backlog.describe()}")
        scheduled = context.scheduled_execution_time
        tags = {TAG_CRON: cron}
        if scheduled:
            tags[TAG_SCHEDULED_TIME] = scheduled.isoformat()
        partition_key = None
        if isinstance(partitions_def, TimeWindowPartitionsDefinition) and scheduled:
            # A 02:00 report covers the last *complete* day, i.e. yesterday.
            partition_key = last_complete_partition(partitions_def, scheduled)
        return RunRequest(tags=tags, partition_key=partition_key)

    decorate = schedule(
        name=f"{spec.name}_schedule",
        cron_schedule=cron,
        job=target,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Runs {spec.name} on `{cron}` (UTC). {skips}.",
        tags={TAG_CRON: cron, TAG_TRIGGER: "schedule", "owner": spec.owner},
    )
    if probe is None:

        def _plain(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
            return evaluate(context, None)

        return decorate(_plain)

    # The probe's resource as a parameter: how Dagster hands resources to a schedule.
    def _probed(
        context: ScheduleEvaluationContext, database: ResourceParam[Any]
    ) -> RunRequest | SkipReason:
        return evaluate(context, database)

    return decorate(_probed)


def report_current(context: ScheduleEvaluationContext, spec: TaskSpec, backlog: Backlog) -> None:
    """A tick that skips because nothing is due leaves the job's tables as current as a run would
    have: say so with a runless materialization of each, or the table would go stale (an alert,
    ``platform.freshness``) on a quiet queue. Not on the overlap guard's skip: the active run
    materializes when it ends, and a stuck one must let its tables go stale. Best effort: the tick
    skips either way."""
    scheduled = context.scheduled_execution_time
    metadata: dict[str, Any] = {"due": backlog.count, "source": "schedule tick: nothing due"}
    if scheduled:
        metadata["scheduled_time"] = scheduled.isoformat()
    try:
        for key in spec.assets:
            context.instance.report_runless_asset_event(
                AssetMaterialization(
                    asset_key=key,
                    description=f"Current as of {spec.name}'s tick: {backlog.describe()}",
                    metadata=metadata,
                )
            )
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {exc}", secret_values())
        context.log.warning(f"{spec.name}: could not record its tables as current ({reason})")


WORK_SENSOR = "queue_work_sensor"


def work_sensor(
    queues: Sequence[tuple[TaskSpec, JobDefinition]],
    *,
    name: str = WORK_SENSOR,
    interval_s: int = DEFAULT_SENSOR_INTERVAL_S,
) -> SensorDefinition:
    """Launches each queue's job as soon as its backlog probe finds work and no run of it is
    active: work in seconds rather than at the next tick (the schedules stay as the safety net).

    One sensor for every queue: each evaluation costs the daemon a call to the code server and a
    tick in its storage, whatever the sensor asks, so one evaluation asks every queue."""
    for spec, _job in queues:
        if spec.backlog is None:
            raise ValueError(f"{spec.name}: a work sensor needs the task's backlog probe")
    names = ", ".join(spec.name for spec, _ in queues)

    @sensor(
        name=name,
        jobs=[job for _, job in queues],
        minimum_interval_seconds=interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Launches {names} within about {interval_s} s of work becoming due, one run of each "
            "at a time; their schedules stay as the safety net."
        ),
    )
    def _sensor(
        context: SensorEvaluationContext, database: ResourceParam[Any]
    ) -> list[RunRequest] | SkipReason:
        requests: list[RunRequest] = []
        skipped: list[str] = []
        for spec, _job in queues:
            assert spec.backlog is not None
            blocked = in_progress(context, spec.name)
            if blocked is not None:
                skipped.append(blocked)
                continue
            backlog = ask_backlog(spec.backlog, database)
            if isinstance(backlog, str):
                # Not a reason to launch, unlike the schedule: it would launch a failing run
                # every few seconds. The schedule's next tick runs the job and shows the error.
                skipped.append(f"{spec.name}: could not ask for due work: {backlog}")
            elif backlog.count == 0:
                skipped.append(f"{spec.name}: nothing due: {backlog.describe()}")
            else:
                context.log.info(f"{backlog.describe()}: launching {spec.name}")
                requests.append(RunRequest(job_name=spec.name, tags={TAG_TRIGGER: "sensor"}))
        if requests:
            for reason in skipped:
                context.log.info(reason)
            return requests
        return SkipReason("; ".join(skipped))

    return _sensor


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
