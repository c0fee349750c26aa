"""One declaration per task: a :class:`TaskSpec` holds a task's registration (cron, timeout,
retries) and turns a plain ``async def`` into the op or asset (``RetryPolicy``, an enforced timeout,
redacted errors, a closing line per attempt), its job and its schedule; docs/platform.md,
"alianza_jobs.platform.task", says what each piece does and why Dagster needs the timeout from us.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetMaterialization,
    Backoff,
    Jitter,
    JobDefinition,
    MaterializeResult,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    ScheduleDefinition,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    multi_asset_check,
    op,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._utils.schedules import is_valid_cron_string

from alianza_jobs.logs import bound_logger
from alianza_jobs.platform import metrics
from alianza_jobs.platform.attempts import attempt_of, counter_fields, run_logger
from alianza_jobs.platform.schedules import BacklogProbe, cron_for, task_schedule
from alianza_jobs.platform.tags import MAX_RUNTIME_TAG, OWNER, TAG_JOB, TAG_RETRIES, TAG_TIMEOUT
from alianza_jobs.redaction import redact, secret_values
from alianza_jobs.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

# Run monitoring measures from run start: process start-up and resource set-up come on top of the
# op's own attempts. A minute covers a cold start on a loaded machine.
RUN_STARTUP_GRACE = timedelta(seconds=60)


class TaskTimeoutError(Exception):
    """The task ran past its declared timeout and was cancelled."""


class TaskError(Exception):
    """A failure whose original message had to be redacted."""


@dataclass(frozen=True)
class Retry:
    """Retries and the delay between them, plus Dagster's backoff and jitter."""

    max_retries: int
    delay: timedelta
    backoff: Backoff | None = None
    jitter: Jitter | None = None

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_retries,
            delay=self.delay.total_seconds(),
            backoff=self.backoff,
            jitter=self.jitter,
        )

    def worst_case_delays(self) -> timedelta:
        """Upper bound of all waits between attempts, mirroring ``dagster...calculate_delay``."""
        base = self.delay.total_seconds()
        total = 0.0
        for attempt in range(1, self.max_retries + 1):
            if self.backoff is Backoff.EXPONENTIAL:
                wait = (2**attempt - 1) * base
            elif self.backoff is Backoff.LINEAR:
                wait = attempt * base
            else:
                wait = base
            if self.jitter is Jitter.PLUS_MINUS:
                wait += base
            total += wait
        return timedelta(seconds=total)

    def describe(self) -> str:
        parts = [f"{self.max_retries} retr{'y' if self.max_retries == 1 else 'ies'}"]
        parts.append(f"{_seconds(self.delay)} s delay")
        if self.backoff is not None:
            parts.append(self.backoff.value.lower())
        if self.jitter is not None:
            parts.append("jitter")
        return ", ".join(parts)


@dataclass
class TaskReport:
    """What a task reports: counters (processed, succeeded, failed, ...) and extra metadata.

    The task wrapper turns it into op output metadata and into the metadata of a materialization of
    each asset the task maintains, so the UI plots the counters' history.
    """

    counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per-asset counters when a task touches several assets; default: every asset gets ``counts``.
    asset_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Asset checks only (``spec.multi_asset_check``): the results the wrapper hands to Dagster.
    check_results: list[AssetCheckResult] = field(default_factory=list)

    def add(self, key: str, amount: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + amount

    def merge(self, other: Mapping[str, int]) -> None:
        for key, amount in other.items():
            self.add(key, amount)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    timeout: timedelta
    cron: str | None = None
    """Default cron (UTC); ``None`` for a task that only runs when launched by hand."""
    env_crons: Mapping[str, str] = field(default_factory=dict)
    """Per-``ALIANZA_ENV`` crons (an environment without one uses the default cron)."""
    retry: Retry | None = None
    assets: Sequence[str] = ()
    """Asset keys (tables) this task maintains: each successful run materializes them."""
    owner: str = OWNER
    backlog: BacklogProbe | None = None
    """A queue's "how much is due?" (one read-only query): its schedule skips ticks that would
    find nothing, and the work sensor (``platform.schedules.work_sensor``) launches its runs when
    work appears."""

    def __post_init__(self) -> None:
        for cron in (self.cron, *self.env_crons.values()):
            if cron is not None and not is_valid_cron_string(cron):
                raise ValueError(f"{self.name}: {cron!r} is not a valid cron expression")

    # -- what the UI and the CLI show -------------------------------------------------------------

    @property
    def timeout_seconds(self) -> float:
        return self.timeout.total_seconds()

    @property
    def max_attempts(self) -> int:
        return 1 + (self.retry.max_retries if self.retry else 0)

    @property
    def max_runtime(self) -> timedelta:
        """Backstop for ``dagster/max_runtime``: every attempt timing out, every wait at its longest."""
        waits = self.retry.worst_case_delays() if self.retry else timedelta(0)
        return self.timeout * self.max_attempts + waits + RUN_STARTUP_GRACE

    def describe_retry(self) -> str:
        return self.retry.describe() if self.retry else "no retries"

    @property
    def op_tags(self) -> dict[str, str]:
        return {
            TAG_TIMEOUT: _seconds(self.timeout),
            TAG_RETRIES: self.describe_retry(),
            "owner": self.owner,
        }

    @property
    def job_tags(self) -> dict[str, str]:
        return {
            TAG_JOB: self.name,
            MAX_RUNTIME_TAG: str(int(self.max_runtime.total_seconds())),
            "owner": self.owner,
        }

    def long_description(self) -> str:
        return (
            f"{self.description}\n\nTimeout: {_seconds(self.timeout)} s per attempt "
            f"(enforced). Retries: {self.describe_retry()}."
        )

    def cron_for(self, settings: Settings) -> str | None:
        """The cron for this environment: an ``ALIANZA_CRON_<JOB>`` override, else the env's, else ours."""
        return cron_for(self, settings)

    # -- the Dagster definitions ------------------------------------------------------------------

    def op(self, fn: Callable[..., Awaitable[Any]]) -> OpDefinition:
        """The op, named after the function: Dagster names the job's graph after the job, so the op
        needs a name of its own (say what it does: ``send_due_emails`` in ``process_email_queue``)."""
        if fn.__name__ == self.name:
            raise ValueError(f"{self.name}: name the op function after what it does, not the job")
        return op(
            name=fn.__name__,
            description=self.long_description(),
            retry_policy=self.retry.policy if self.retry else None,
            tags=self.op_tags,
            # The counters travel as metadata; there is no value for an IO manager to store.
            out=Out(Nothing),
        )(self._guard(fn))

    def asset(self, **asset_kwargs: Any) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
            return asset(
                retry_policy=self.retry.policy if self.retry else None,
                op_tags=self.op_tags,
                owners=[self.owner],
                **asset_kwargs,
            )(self._guard(fn))

        return decorate

    def multi_asset_check(
        self, **check_kwargs: Any
    ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        """Asset checks as a task: the function returns a ``TaskReport`` with ``check_results``.

        The checks run to the end under the timeout first; then their results are yielded (an
        async generator is what Dagster takes check results from, executed and invoked directly).
        """

        def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
            guarded = self._guard(fn)

            @functools.wraps(guarded)
            async def checks(*args: Any, **kwargs: Any) -> AsyncIterator[AssetCheckResult]:
                for result in await guarded(*args, **kwargs):
                    yield result

            checks.__signature__ = guarded.__signature__  # type: ignore[attr-defined]
            return multi_asset_check(
                retry_policy=self.retry.policy if self.retry else None,
                op_tags=self.op_tags,
                **check_kwargs,
            )(checks)

        return decorate

    def job(self, op_def: OpDefinition) -> JobDefinition:
        @job(
            name=self.name,
            description=self.long_description(),
            tags=self.job_tags,
            executor_def=in_process_executor,
        )
        def _job() -> None:
            op_def()

        return _job

    def asset_job(self, selection: Any, **kwargs: Any) -> UnresolvedAssetJobDefinition:
        return define_asset_job(
            name=self.name,
            selection=selection,
            description=self.long_description(),
            tags=self.job_tags,
            executor_def=in_process_executor,
            **kwargs,
        )

    def schedule(
        self, target: JobDefinition | UnresolvedAssetJobDefinition, settings: Settings
    ) -> ScheduleDefinition:
        return task_schedule(self, target, settings)

    # -- the wrapper: timeout, logging, metrics, redaction ------------------------------------------

    def _guard(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[Any]]:
        spec = self

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            context = args[0] if args else kwargs.get("context")
            if isinstance(context, AssetCheckExecutionContext):
                op_context: OpExecutionContext | AssetExecutionContext = (
                    context.op_execution_context
                )
            elif isinstance(context, OpExecutionContext | AssetExecutionContext):
                op_context = context
            else:
                raise TypeError(f"{spec.name}: the task function must take `context` first")
            logger = run_logger(op_context, spec.name)
            attempt = attempt_of(op_context)
            started = time.perf_counter()
            outcome = "failure"
            error: str | None = None
            result: Any = None
            with bound_logger(logger):
                logger.info(
                    f"Starting {spec.name}",
                    attempt=attempt,
                    max_attempts=spec.max_attempts,
                    timeout_s=spec.timeout_seconds,
                )
                try:
                    result = await spec._run_with_timeout(fn, *args, **kwargs)
                    outcome = "success"
                except TaskTimeoutError as exc:
                    outcome, error = "timeout", f"{type(exc).__name__}: {exc}"
                    raise
                except Exception as exc:
                    safe = _redacted(exc)
                    error = f"{type(safe).__name__}: {safe}"
                    if safe is exc:
                        raise
                    raise safe from None
                finally:
                    duration_ms = round((time.perf_counter() - started) * 1000, 1)
                    report = result if isinstance(result, TaskReport) else None
                    metrics.record_task(spec.name, attempt, outcome, duration_ms, report)
                    # The closing line, one per attempt, with the field names log searches already use.
                    logger.log(
                        logging.INFO if outcome == "success" else logging.ERROR,
                        "Cron job execution completed"
                        if outcome == "success"
                        else "Cron job execution failed",
                        totalDuration=duration_ms,
                        totalJobs=1,
                        successCount=int(outcome == "success"),
                        failureCount=int(outcome != "success"),
                        outcome=outcome,
                        error=error,
                        **counter_fields(report),
                    )
            if isinstance(result, TaskReport):
                return spec._to_dagster_result(context, result, duration_ms, attempt)
            return result

        # Dagster reads the parameters (context, config, resources) off the signature; evaluating the
        # annotations here lets task modules use `from __future__ import annotations`.
        # The wrapper returns Dagster's Output/MaterializeResult, whatever the task function returns.
        guarded.__signature__ = inspect.signature(fn, eval_str=True).replace(  # type: ignore[attr-defined]
            return_annotation=inspect.Signature.empty
        )
        return guarded

    async def _run_with_timeout(
        self, fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        deadline = asyncio.timeout(self.timeout_seconds)
        try:
            async with deadline:
                return await fn(*args, **kwargs)
        except TimeoutError:
            if deadline.expired():
                raise TaskTimeoutError(
                    f"{self.name} exceeded its {_seconds(self.timeout)} s timeout"
                ) from None
            raise

    def _to_dagster_result(
        self,
        context: OpExecutionContext | AssetExecutionContext | AssetCheckExecutionContext,
        report: TaskReport,
        duration_ms: float,
        attempt: int,
    ) -> Output[None] | MaterializeResult[None] | list[AssetCheckResult]:
        if isinstance(context, AssetCheckExecutionContext):
            # Yielded one by one by multi_asset_check's wrapper. A failed check with blocking=True
            # fails the step once every result has been recorded.
            return list(report.check_results)
        base: dict[str, Any] = {
            "duration_ms": duration_ms,
            "attempt": attempt,
            **report.counts,
            **report.metadata,
        }
        if isinstance(context, AssetExecutionContext) or context.has_assets_def:
            return MaterializeResult(metadata=base)
        for key in self.assets:
            context.log_event(
                AssetMaterialization(
                    asset_key=key,
                    description=f"Maintained by {self.name}",
                    metadata={**base, **report.asset_metadata.get(key, {})},
                )
            )
        return Output(None, metadata=base)


def _redacted(exc: Exception) -> Exception:
    """The exception itself, unless its message (or a chained one's) would leak a secret."""
    secrets = secret_values()
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(redact(str(e), secrets) != str(e) for e in chain):
        return TaskError(f"{type(exc).__name__}: {redact(str(exc), secrets)}")
    return exc


def _seconds(value: timedelta) -> str:
    seconds = value.total_seconds()
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"
