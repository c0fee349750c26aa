"""``alianza-jobs doctor``: is this deployment ready to run the jobs? One line per check.

Run it where the webserver and the daemon run, with their environment (``ALIANZA_ENV``,
``DAGSTER_HOME``, the secrets), after deploying and after every change of configuration. Any
failure exits 1; secrets never appear. The checks, in order: docs/platform.md,
"alianza_jobs.cli.doctor".
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from dagster import AssetKey, DagsterInstance, DefaultScheduleStatus, Definitions
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._daemon.types import DaemonHeartbeat
from dagster_shared.error import SerializableErrorInfo
from sqlalchemy.engine import make_url

from alianza_jobs.cli.runs import load_defs
from alianza_jobs.platform.freshness import fresh_tables
from alianza_jobs.platform.instance import get_instance
from alianza_jobs.redaction import redact, secret_values
from alianza_jobs.settings import (
    Settings,
    SettingsError,
    describe_required_secrets,
    load_settings,
    mask_url,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
# Daemons write a heartbeat every 30 s; three missed ones mean the daemon is gone or wedged.
HEARTBEAT_MAX_AGE_S = 90.0
# The order of the lines: configuration, the app's database, Dagster, then the outside APIs.
CHECKS = (
    "settings",
    "secrets",
    "app database",
    "dagster storage",
    "daemon",
    "schedules",
    "fresh tables",
    "stream api",
    "resend api",
    "stream webhooks",
)
# A delivery waiting longer than this means nothing is applying them (daemon down, sensor off).
WEBHOOK_BACKLOG_MAX_AGE_S = 120.0
WEBHOOK_SENSOR = "queue_work_sensor"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<16} {self.detail}"


class CheckFailed(Exception):
    """A check ran and found the deployment not ready; the message is the detail line."""


@dataclass
class _Context:
    module: str
    timeout_s: float
    secrets: list[str]
    settings: Settings | None = None
    instance: DagsterInstance | None = None
    app_database_ok: bool = False


# -- running the checks -------------------------------------------------------------------------


def run_checks(module: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[CheckResult]:
    """Every check, in order, against the current environment. Never raises for a failed check."""
    ctx = _Context(module=module, timeout_s=timeout_s, secrets=secret_values())
    results = [
        _run(ctx, "settings", _check_settings),
        _run(ctx, "secrets", _check_secrets),
        *_run_service_probes(ctx),
    ]
    ctx.app_database_ok = any(r.name == "app database" and r.ok for r in results)
    results += [
        _run(ctx, "dagster storage", _check_dagster_storage),
        _run(ctx, "daemon", _check_daemon),
        _run(ctx, "schedules", _check_schedules),
        _run(ctx, "fresh tables", _check_freshness),
        _run(ctx, "stream webhooks", _check_webhooks),
    ]
    if ctx.instance is not None:
        ctx.instance.dispose()
    return sorted(results, key=lambda r: CHECKS.index(r.name))


def _run(ctx: _Context, name: str, check: Callable[[_Context], str]) -> CheckResult:
    try:
        return CheckResult(name, True, check(ctx))
    except CheckFailed as exc:
        return CheckResult(name, False, redact(str(exc), ctx.secrets))
    except Exception as exc:
        return CheckResult(name, False, redact(_describe(exc), ctx.secrets))


def _describe(exc: BaseException) -> str:
    """Type and first line: drivers and Dagster put SQL, config dumps and stacks below it."""
    if isinstance(exc, DagsterInvalidConfigError) and exc.errors:
        # The first line dumps the whole schema; the reason (a variable not set) is further down.
        reason = exc.errors[0].message.split("\n\nStack Trace")[0].strip().splitlines()[-1]
        return f"dagster.yaml: {reason.split('Error: ', 1)[-1]}"
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def _with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run blocking ``fn`` in a daemon thread, giving up after ``timeout_s``.

    Dagster's storage calls block (and retry a refused connection for a while); a hung connection
    must not hang the doctor, nor keep the process from exiting afterwards.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"doctor-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise CheckFailed(f"no answer from {what} within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


# -- configuration ------------------------------------------------------------------------------


def _check_settings(ctx: _Context) -> str:
    try:
        ctx.settings = load_settings()
    except SettingsError as exc:
        raise CheckFailed(str(exc)) from None
    s = ctx.settings
    return f"ALIANZA_ENV={s.env.value}, DATABASE_URL={mask_url(s.database_url)}"


def _check_secrets(ctx: _Context) -> str:
    try:
        return describe_required_secrets()
    except SettingsError as exc:
        raise CheckFailed(str(exc)) from None


# -- the app's services: database, Stream, Resend -----------------------------------------------


def _run_service_probes(ctx: _Context) -> list[CheckResult]:
    names = ("app database", "stream api", "resend api")
    if ctx.settings is None:
        return [CheckResult(n, False, "not checked: settings did not load") for n in names]
    settings = ctx.settings
    try:
        probes = _service_probes(settings)
    except Exception as exc:
        detail = redact(f"cannot build the resources: {_describe(exc)}", ctx.secrets)
        return [CheckResult(n, False, detail) for n in names]

    async def probe_all() -> list[CheckResult]:
        return list(
            await asyncio.gather(*(_probe(ctx, n, *probes[n]) for n in names)),
        )

    return asyncio.run(probe_all())


ProbeFn = Callable[[], Awaitable[dict[str, Any]]]
Describe = Callable[[dict[str, Any], float], str]


def _service_probes(settings: Settings) -> dict[str, tuple[ProbeFn, Describe]]:
    # The health_check job's own probes, so "healthy" means one thing in the UI and here. Imported
    # here: they pull in the task's asset checks, which only this part of the doctor needs.
    from alianza_jobs.defs.health.health_check import probe_database, probe_resend, probe_stream
    from alianza_jobs.resources import build_resources

    # Resolve EnvVar-backed config the way a run does: the probes need the values.
    resources = {
        name: resource.process_config_and_initialize()
        for name, resource in build_resources(settings).items()
        if name in ("database", "stream", "resend")
    }
    database, stream, resend = resources["database"], resources["stream"], resources["resend"]
    where_stream = (
        "in-process emulator" if settings.stream_emulated else settings.cloudflare_api_base_url
    )
    where_resend = (
        "in-process emulator" if settings.resend_emulated else settings.resend_api_base_url
    )

    async def database_probe() -> dict[str, Any]:
        _require_sqlite_file(settings.database_url)
        return await probe_database(database)

    return {
        "app database": (
            database_probe,
            lambda d, ms: (
                f"{mask_url(settings.database_url)} at revision {d.get('revision')} "
                f"(head), {ms:g} ms"
            ),
        ),
        "stream api": (
            lambda: probe_stream(stream),
            lambda d, ms: f"{where_stream}: listing authorised ({d.get('status')}), {ms:g} ms",
        ),
        "resend api": (
            lambda: probe_resend(resend),
            lambda d, ms: (
                f"{where_resend}: key accepted ("
                + ("sending-only key" if d.get("key_access") == "sending_only" else "full access")
                + f"), {ms:g} ms"
            ),
        ),
    }


def _require_sqlite_file(url: str) -> None:
    """Connecting would create an empty SQLite file: say what is wrong instead of making it."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        path = Path(parsed.database)
        if not path.exists():
            raise CheckFailed(f"{path} does not exist: run `alianza-jobs db upgrade`")


async def _probe(ctx: _Context, name: str, probe: ProbeFn, describe: Describe) -> CheckResult:
    from alianza_jobs.defs.health.health_check import measure

    result = await measure(name, probe, timeout_s=ctx.timeout_s, secrets=ctx.secrets)
    if result.ok:
        return CheckResult(name, True, describe(result.details, result.latency_ms))
    # measure() prefixes an exception's message with its type; our own verdicts are sentences.
    error = (result.error or "failed").removeprefix(f"{CheckFailed.__name__}: ")
    return CheckResult(name, False, redact(error, ctx.secrets))


# -- Dagster: storage, daemon, schedules --------------------------------------------------------


def _check_dagster_storage(ctx: _Context) -> str:
    outside_local = ctx.settings is not None and not ctx.settings.is_local
    if outside_local and not (ctx.settings and ctx.settings.dagster_home_from_env):
        raise CheckFailed(
            "DAGSTER_HOME is not set: this command would use a private instance under .alianza/, "
            "not the deployment's (set it as the webserver and daemon have it)"
        )

    def probe() -> DagsterInstance:
        instance = get_instance()
        try:
            instance.get_run_records(limit=1)
        except BaseException:
            instance.dispose()
            raise
        return instance

    instance = _with_deadline(probe, ctx.timeout_s, "Dagster's storage")
    ctx.instance = instance
    storage = type(instance.run_storage).__name__
    if isinstance(instance.run_storage, SqliteRunStorage) and outside_local:
        raise CheckFailed(
            f"{storage} in {instance.root_directory}: outside local the webserver, the daemon and "
            "every run must share Postgres storage (deploy/dagster.yaml)"
        )
    return f"{storage} answers (DAGSTER_HOME={instance.root_directory})"


def _check_daemon(ctx: _Context) -> str:
    instance = ctx.instance
    if instance is None:
        raise CheckFailed("not checked: Dagster's storage is not reachable")

    def read() -> tuple[Sequence[str], Mapping[str, DaemonHeartbeat]]:
        return instance.get_required_daemon_types(), instance.get_daemon_heartbeats()

    required, heartbeats = _with_deadline(read, ctx.timeout_s, "Dagster's storage")
    now = time.time()
    missing = [d for d in required if d not in heartbeats]
    if len(missing) == len(required) and required:
        raise CheckFailed("no daemon heartbeat at all: is `dagster-daemon run` running?")
    problems = [f"never reported: {', '.join(missing)}"] if missing else []
    newest = max((heartbeats[d].timestamp for d in required if d in heartbeats), default=0.0)
    silent = {d: now - heartbeats[d].timestamp for d in required if d in heartbeats}
    silent = {d: age for d, age in silent.items() if age > HEARTBEAT_MAX_AGE_S}
    if silent:
        problems.append(f"silent for {max(silent.values()):.0f} s: {', '.join(silent)}")
    for daemon_type in required:
        heartbeat = heartbeats.get(daemon_type)
        if heartbeat is not None and daemon_type not in silent and heartbeat.errors:
            message = _describe_error(heartbeat.errors[0])
            problems.append(f"{daemon_type} reports {len(heartbeat.errors)} error(s): {message}")
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"{len(required)} daemons alive, last heartbeat {now - newest:.0f} s ago"


def _describe_error(error: SerializableErrorInfo) -> str:
    lines = error.message.strip().splitlines()
    return lines[0] if lines else "(no message)"


def _code_location(ctx: _Context) -> tuple[DagsterInstance, Definitions]:
    """What the checks of Dagster's state need: its storage and the loaded code location."""
    if ctx.settings is None:
        raise CheckFailed("not checked: settings did not load")
    instance = ctx.instance
    if instance is None:
        raise CheckFailed("not checked: Dagster's storage is not reachable")
    try:
        return instance, load_defs(ctx.module)
    except click.ClickException as exc:
        raise CheckFailed(
            f"code location {ctx.module} does not load: {exc.format_message()}"
        ) from None


def _check_schedules(ctx: _Context) -> str:
    instance, defs = _code_location(ctx)
    declared = _declared_schedules(defs)
    if not declared:
        return f"{ctx.module} declares no schedules"
    states = _with_deadline(
        lambda: instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE),
        ctx.timeout_s,
        "Dagster's storage",
    )
    by_name: dict[str, list[InstigatorStatus]] = {}
    for state in states:
        by_name.setdefault(state.instigator_name, []).append(state.status)
    stopped = [
        name for name, default in declared.items() if not _running(by_name.get(name, []), default)
    ]
    if stopped:
        raise CheckFailed(
            f"{len(stopped)} of {len(declared)} stopped: {', '.join(sorted(stopped))} "
            "(start them in the UI's Automation page)"
        )
    return f"{len(declared)} of {len(declared)} running"


def _check_freshness(ctx: _Context) -> str:
    """The freshness daemon's latest verdict on each table with a policy: a stale one means its
    job has stopped updating it (schedule off, run stuck, daemon down; docs/alerts.md)."""
    instance, defs = _code_location(ctx)
    tables = sorted(fresh_tables(defs.assets or []), key=lambda key: key.to_user_string())
    if not tables:
        return f"{ctx.module} gives no table a freshness policy"

    def read() -> tuple[dict[AssetKey, FreshnessState], dict[AssetKey, float]]:
        records = instance.get_freshness_state_records(tables)
        states = {
            key: record.freshness_state if (record := records.get(key)) else FreshnessState.UNKNOWN
            for key in tables
        }
        stale = [key for key, state in states.items() if state is FreshnessState.FAIL]
        # One query for the stale tables' last updates (an asset record holds its latest).
        updated = {
            asset.asset_entry.asset_key: latest.timestamp
            for asset in (instance.get_asset_records(stale) if stale else [])
            if (latest := asset.asset_entry.last_materialization) is not None
        }
        return states, updated

    states, updated = _with_deadline(read, ctx.timeout_s, "Dagster's storage")
    now = time.time()
    stale = [
        f"{key.to_user_string()} ({_last_update(now, updated.get(key))})"
        for key, state in states.items()
        if state is FreshnessState.FAIL
    ]
    if stale:
        raise CheckFailed(
            f"{len(stale)} of {len(states)} stale: {', '.join(stale)}: is its job's schedule "
            'on and its last run finished? (docs/alerts.md, "Stale tables")'
        )
    fresh = [key for key, state in states.items() if state in _FRESH]
    line = f"{len(fresh)} of {len(states)} fresh"
    # UNKNOWN: never updated, or not yet evaluated by the daemon. Nothing is late until a first
    # update has come, so it is not a failure.
    unjudged = [key.to_user_string() for key, state in states.items() if state not in _FRESH]
    if unjudged:
        line += f"; no verdict yet: {', '.join(unjudged)}"
    return line


_FRESH = (FreshnessState.PASS, FreshnessState.WARN)


def _last_update(now: float, at: float | None) -> str:
    if at is None:
        return "never updated"
    minutes = max(0, round((now - at) / 60))
    ago = f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"
    return f"last updated {ago} ago"


def _declared_schedules(defs: Definitions) -> dict[str, DefaultScheduleStatus]:
    declared: dict[str, DefaultScheduleStatus] = {}
    for schedule in defs.schedules or []:
        resolved = defs.resolve_schedule_def(schedule.name)
        declared[resolved.name] = resolved.default_status
    return declared


def _running(statuses: list[InstigatorStatus], default: DefaultScheduleStatus) -> bool:
    """What the daemon does: an explicit stop or start wins; otherwise the code's default."""
    if InstigatorStatus.STOPPED in statuses:
        return False
    if InstigatorStatus.RUNNING in statuses:
        return True
    return default is DefaultScheduleStatus.RUNNING


# -- the Stream webhook receiver ------------------------------------------------------------------


def _check_webhooks(ctx: _Context) -> str:
    settings = ctx.settings
    if settings is None:
        raise CheckFailed("not checked: settings did not load")
    if not settings.event_triggers:
        return "off (ALIANZA_EVENT_TRIGGERS=false): the video queue's cron settles every video"
    if not settings.is_local and not settings.webhook_secret_configured:
        raise CheckFailed(
            "CLOUDFLARE_STREAM_WEBHOOK_SECRET is not set: the receiver cannot verify deliveries "
            "(`alianza-jobs webhooks register --url https://.../stream/webhook` prints it)"
        )
    health = f"{settings.webhooks_url}/healthz"

    def answers() -> int:
        import httpx

        return httpx.get(health, timeout=ctx.timeout_s).status_code

    try:
        status = _with_deadline(answers, ctx.timeout_s + 1, "the webhook receiver")
    except CheckFailed:
        raise
    except Exception as exc:
        raise CheckFailed(
            f"no receiver at {settings.webhooks_url} ({_describe(exc)}): is `alianza-jobs "
            "webhooks serve` running? (ALIANZA_WEBHOOKS_URL says where it listens)"
        ) from None
    if status != 200:
        raise CheckFailed(f"{health} answered {status}, not 200")
    if not ctx.app_database_ok:
        raise CheckFailed(
            f"receiver at {settings.webhooks_url} answers; its deliveries not checked: "
            "the app database is not ready"
        )
    waiting, oldest_s = _with_deadline(
        lambda: _webhook_backlog(settings), ctx.timeout_s, "the app database"
    )
    if waiting and oldest_s > WEBHOOK_BACKLOG_MAX_AGE_S:
        raise CheckFailed(
            f"{waiting} deliveries waiting, the oldest for {oldest_s:.0f} s: is the daemon "
            f"running and {WEBHOOK_SENSOR} on?"
        )
    instance = ctx.instance
    if instance is not None:
        states = _with_deadline(
            lambda: instance.all_instigator_state(instigator_type=InstigatorType.SENSOR),
            ctx.timeout_s,
            "Dagster's storage",
        )
        if any(
            st.instigator_name == WEBHOOK_SENSOR and st.status is InstigatorStatus.STOPPED
            for st in states
        ):
            raise CheckFailed(f"{WEBHOOK_SENSOR} is stopped: deliveries wait for the video cron")
    return f"receiver at {settings.webhooks_url} answers; {waiting} deliveries waiting"


def _webhook_backlog(settings: Settings) -> tuple[int, float]:
    from sqlalchemy import func, select

    from alianza_jobs.db.probe import probe_connection
    from alianza_jobs.db.types import utcnow
    from alianza_jobs.defs.videos.webhook_sql import DELIVERIES

    pending = DELIVERIES.c.applied_at.is_(None)
    with probe_connection(
        settings.database_url,
        schema_map_path=settings.schema_map_path,
        jobs_schema=settings.db_schema,
    ) as (conn, _tables):
        row = conn.execute(
            select(func.count(), func.min(DELIVERIES.c.received_at)).where(pending)
        ).one()
    count, oldest = int(row[0]), row[1]
    return count, (utcnow() - oldest).total_seconds() if oldest is not None else 0.0


# -- the command --------------------------------------------------------------------------------


@click.command("doctor")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Deadline of each check that talks to a service, in seconds.",
)
@click.pass_obj
def doctor_command(obj: dict[str, Any], timeout_s: float) -> None:
    """Check this deployment: settings, secrets, databases, daemon, schedules, stale tables, APIs.
    Exit 1 on any failure."""
    results = run_checks(obj["module"], timeout_s)
    for result in results:
        click.echo(result.line())
    failed = [r.name for r in results if not r.ok]
    if failed:
        click.echo(f"doctor: {len(failed)} of {len(results)} checks failed ({', '.join(failed)})")
        sys.exit(1)
    click.echo(f"doctor: all {len(results)} checks passed")
