"""``health_check``: every minute, probes the app database, the Cloudflare Stream and Resend APIs
and the report storage side by side, each under its own deadline and with one request and no
retries, and records each as a blocking asset check on its service's asset, so any failure fails
the run; see docs/health.md."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSpec, AssetSelection
from pydantic import Field
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from alianza_jobs.clients.http import (
    ApiError,
)
from alianza_jobs.db.engine import read_only
from alianza_jobs.db.platform_check import check_platform
from alianza_jobs.defs.health.assets import (
    APP_DATABASE,
    CLOUDFLARE_STREAM_API,
    REPORT_STORAGE,
    RESEND_API,
)
from alianza_jobs.logs import get_logger
from alianza_jobs.platform.task import TaskReport, TaskSpec
from alianza_jobs.redaction import redact, secret_values
from alianza_jobs.resources import CloudflareStream, Database, ReportStorage, ResendEmail

TASK = TaskSpec(
    name="health_check",
    description=(
        "Probes the app database (reachable, schema at head), the Cloudflare Stream and Resend "
        "APIs (an authenticated read each) and the report storage; any failure fails the run."
    ),
    cron="* * * * *",
    timeout=timedelta(seconds=30),
    retry=None,
)

CHECK_NAME = "healthy"

CHECK_SPECS = [
    AssetCheckSpec(
        CHECK_NAME,
        asset=APP_DATABASE.key,
        blocking=True,
        description="SELECT 1, and the schema at the migrations' head.",
    ),
    AssetCheckSpec(
        CHECK_NAME,
        asset=CLOUDFLARE_STREAM_API.key,
        blocking=True,
        description="An authenticated listing of one video (GET .../stream?limit=1).",
    ),
    AssetCheckSpec(
        CHECK_NAME,
        asset=RESEND_API.key,
        blocking=True,
        description="An authenticated read that sends nothing (GET /emails/<unknown id>).",
    ),
    AssetCheckSpec(
        CHECK_NAME,
        asset=REPORT_STORAGE.key,
        blocking=True,
        description="Write, read back and delete a file in the report directory.",
    ),
]


class HealthCheckConfig(dg.Config):
    check_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=25,
        description=(
            "Deadline of each probe (they run side by side, under the task's 30 s timeout). "
            "A probe that takes longer fails with a timeout."
        ),
    )


@dataclass(frozen=True)
class ProbeResult:
    name: str
    ok: bool
    latency_ms: float
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class ProbeError(Exception):
    """A probe reached the service and found it unhealthy (schema behind, unexpected answer)."""


# -- the probes -------------------------------------------------------------------------------------


async def probe_database(database: Database) -> dict[str, Any]:
    # Imported here: Alembic (with its templating and console deps) costs ~0.25 s, paid by
    # this check's runs only, not by every load of the code location.
    from alianza_jobs.db import migrate

    async with database.engine() as engine:
        # Deferred BEGIN on SQLite: a probe every minute must not take the write lock.
        reader = read_only(engine)
        async with reader.connect() as conn:
            await conn.execute(text("SELECT 1"))
        current = await migrate.current_revision(reader)
        head = await asyncio.to_thread(migrate.head_revision)
        if current != head:
            raise ProbeError(
                f"schema at revision {current or 'none (no migrations applied)'}, the code "
                f"expects {head}: run `alianza-jobs db upgrade`"
            )
        # The tables the jobs write must hold what they write, or a run fails halfway.
        schema = "public" if database.jobs_schema else None
        problems = await check_platform(reader, database.platform_map(), schema=schema)
    if problems:
        more = f" (and {len(problems) - 1} more: `alianza-jobs db check`)" if problems[1:] else ""
        raise ProbeError(problems[0] + more)
    return {"revision": current or ""}


async def probe_stream(stream: CloudflareStream) -> dict[str, Any]:
    async with stream.client(probe=True) as api:
        return {"status": await api.probe()}


async def probe_resend(resend: ResendEmail) -> dict[str, Any]:
    async with resend.client(probe=True) as api:
        status, access = await api.key_access()
    return {"status": status, "key_access": access}


async def probe_storage(reports: ReportStorage) -> dict[str, Any]:
    await reports.probe()
    return {"directory": reports.directory}


async def measure(
    name: str,
    probe: Callable[[], Awaitable[dict[str, Any]]],
    *,
    timeout_s: float,
    secrets: list[str],
) -> ProbeResult:
    """Run one probe under its deadline; never raises (but lets cancellation through)."""
    started = time.perf_counter()
    details: dict[str, Any] = {}
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            details = await probe()
    except TimeoutError:
        error = f"no answer within {timeout_s:g} s"
    except ApiError as exc:
        error = str(exc)
        details = {k: v for k, v in exc.metadata().items() if v is not None}
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    if error is not None:
        error = redact(error, secrets)
        details = {k: redact(v, secrets) if isinstance(v, str) else v for k, v in details.items()}
    return ProbeResult(name, error is None, latency_ms, error, details)


def _url_password(url: str) -> str | None:
    try:
        password = make_url(url).password
    except ArgumentError:
        return None
    return str(password) if password else None


def check_result(spec: AssetCheckSpec, probe: ProbeResult) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=probe.ok,
        severity=dg.AssetCheckSeverity.ERROR,
        description=probe.error or f"healthy in {probe.latency_ms:g} ms",
        metadata={
            "latency_ms": dg.MetadataValue.float(probe.latency_ms),
            "error": dg.MetadataValue.text(probe.error or ""),
            **probe.details,
        },
    )


# -- the checks -------------------------------------------------------------------------------------


@TASK.multi_asset_check(name="check_services", specs=CHECK_SPECS)
async def check_services(
    context: AssetCheckExecutionContext,
    config: HealthCheckConfig,
    database: Database,
    stream: CloudflareStream,
    resend: ResendEmail,
    reports: ReportStorage,
) -> TaskReport:
    log = get_logger()
    secrets = [
        s
        for s in (stream.api_token, resend.api_key, _url_password(database.url), *secret_values())
        if s
    ]
    probes: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        APP_DATABASE.key.to_user_string(): lambda: probe_database(database),
        CLOUDFLARE_STREAM_API.key.to_user_string(): lambda: probe_stream(stream),
        RESEND_API.key.to_user_string(): lambda: probe_resend(resend),
        REPORT_STORAGE.key.to_user_string(): lambda: probe_storage(reports),
    }
    results = await asyncio.gather(
        *(
            measure(name, probe, timeout_s=config.check_timeout_s, secrets=secrets)
            for name, probe in probes.items()
        )
    )
    report = TaskReport(metadata={"health_checks": {}})
    for spec, result in zip(CHECK_SPECS, results, strict=True):
        report.metadata["health_checks"][result.name] = {
            "ok": result.ok,
            "latency_ms": result.latency_ms,
        }
        report.add("checks_passed" if result.ok else "checks_failed")
        report.check_results.append(check_result(spec, result))
        if result.ok:
            log.info("Health check passed", check=result.name, latency_ms=result.latency_ms)
        else:
            log.log(
                logging.ERROR,
                "Health check failed",
                check=result.name,
                latency_ms=result.latency_ms,
                error=result.error,
            )
    report.counts.setdefault("checks_passed", 0)
    report.counts.setdefault("checks_failed", 0)
    log.info("Health check completed", **{r.name: r.ok for r in results})
    return report


asset_checks = [check_services]
job = TASK.asset_job(selection=AssetSelection.checks(check_services))

__all__ = [
    "CHECK_NAME",
    "CHECK_SPECS",
    "TASK",
    "HealthCheckConfig",
    "ProbeResult",
    "asset_checks",
    "check_services",
    "job",
    "measure",
    "probe_database",
    "probe_resend",
    "probe_storage",
    "probe_stream",
]
