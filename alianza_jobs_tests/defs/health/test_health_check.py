"""health_check: one asset check per service, with its latency; any failure fails the run.

Against the in-process emulators, on SQLite and on the real Postgres: all healthy; then a
database URL pointing nowhere, a database behind on migrations, revoked API credentials, a slow
API and an unwritable report directory each fail their own check (with the reason in its
metadata) and the run, while the other checks still pass. The Resend probe's reading of answers
the emulator does not give (a sending-only key, an HTML 404) is pinned with respx.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import psycopg
import pytest
import respx
from dagster import AssetKey, DagsterInstance
from prometheus_client import CollectorRegistry

from alianza_jobs.clients import resend as resend_api
from alianza_jobs.db import migrate
from alianza_jobs.defs.health import health_check as task
from alianza_jobs.defs.health.assets import SERVICES
from alianza_jobs.defs.health.health_check import HealthCheckConfig, check_services
from alianza_jobs.emulators import ResendEmulator, StreamEmulator
from alianza_jobs.platform import metrics
from alianza_jobs.platform.tags import MAX_RUNTIME_TAG, TAG_JOB
from alianza_jobs.resources import (
    CloudflareStream,
    Database,
    EmulatedCloudflareStream,
    EmulatedResendEmail,
    ReportStorage,
    ResendEmail,
)
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.db.helpers import migrated_engine

# Sentinels: they must never show up in check metadata, events or logs.
STREAM_TOKEN = "cf-SENTINEL-health-token-5e2a91"
RESEND_KEY = "re_SENTINEL_health_key_0c77d3"
NOWHERE = "postgresql://postgres:SENTINEL-db-pw-4411@127.0.0.1:1/nowhere"
SERVICE_NAMES = ["app_database", "cloudflare_stream_api", "resend_api", "report_storage"]


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


async def _migrate(url: str) -> None:
    async with migrated_engine(url):
        pass


@pytest.fixture
def migrated_url(database_url: str) -> str:
    run_async(_migrate(database_url))
    return database_url


def resources(url: str, tmp_path: Path, state_dir: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "database": Database(url=url),
        "stream": EmulatedCloudflareStream(
            account_id="acc-health", api_token=STREAM_TOKEN, emulator_state_dir=str(state_dir)
        ),
        "resend": EmulatedResendEmail(api_key=RESEND_KEY, emulator_state_dir=str(state_dir)),
        "reports": ReportStorage(directory=str(tmp_path / "reports")),
        **overrides,
    }


def run_health_check(
    url: str, tmp_path: Path, state_dir: Path, *, check_timeout_s: float = 10.0, **overrides: Any
) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions(
        assets=SERVICES,
        asset_checks=task.asset_checks,
        jobs=[task.job],
        resources=resources(url, tmp_path, state_dir, **overrides),
    )
    return defs.resolve_job_def("health_check").execute_in_process(
        instance=DagsterInstance.get(),
        run_config={"ops": {"check_services": {"config": {"check_timeout_s": check_timeout_s}}}},
        raise_on_error=False,
    )


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Per service: passed, and the metadata values."""
    out = {}
    for evaluation in result.get_asset_check_evaluations():
        assert evaluation.check_name == task.CHECK_NAME
        out[evaluation.asset_key.to_user_string()] = {
            "passed": evaluation.passed,
            **{k: v.value for k, v in evaluation.metadata.items()},
        }
    return out


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data is not None
    assert failure.step_failure_data.error is not None
    return failure.step_failure_data.error.message


def everything_recorded(result: dg.ExecuteInProcessResult) -> str:
    """Every event message and metadata value of the run, as one string to search for secrets."""
    parts = []
    for event in DagsterInstance.get().all_logs(result.run_id):
        parts.append(event.user_message)
        parts.append(repr(event.dagster_event))
    return "\n".join(parts)


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, CollectorRegistry]]:
    """What the task would push to the Pushgateway (the real gauges, no gateway needed)."""
    captured: list[tuple[str, CollectorRegistry]] = []

    def capture(registry: CollectorRegistry, job: str) -> bool:
        captured.append((job, registry))
        return True

    monkeypatch.setenv("METRICS_ENABLED", "true")
    monkeypatch.setattr(metrics, "push", capture)
    return captured


def health_gauges(pushed: list[tuple[str, CollectorRegistry]]) -> dict[str, tuple[float, float]]:
    [(job, registry)] = pushed
    assert job == "health_check"
    labels = {"task": "health_check", "env": "local"}
    out = {}
    for name in SERVICE_NAMES:
        up = registry.get_sample_value("alianza_health_check_up", {**labels, "check": name})
        latency = registry.get_sample_value(
            "alianza_health_check_latency_seconds", {**labels, "check": name}
        )
        assert up is not None and latency is not None
        out[name] = (up, latency)
    return out


# -- all healthy ------------------------------------------------------------------------------------


def test_all_checks_pass_against_the_emulators(
    migrated_url: str,
    tmp_path: Path,
    state_dir: Path,
    pushed: list[tuple[str, CollectorRegistry]],
) -> None:
    result = run_health_check(migrated_url, tmp_path, state_dir)
    assert result.success
    assert result.dagster_run.tags[TAG_JOB] == "health_check"
    checks = evaluations(result)
    assert sorted(checks) == sorted(SERVICE_NAMES)
    for name, check in checks.items():
        assert check["passed"], name
        assert check["error"] == ""
        assert 0 < check["latency_ms"] < 10_000
    assert checks["app_database"]["revision"] == migrate.head_revision()
    assert checks["cloudflare_stream_api"]["status"] == 200
    assert (checks["resend_api"]["status"], checks["resend_api"]["key_access"]) == (404, "full")
    # One authenticated request each, answered by the emulators; the probe file is gone again.
    stream = StreamEmulator(state_dir)
    assert stream.calls(service="stream", status=200) == 1
    assert stream.calls(service="resend", status=404) == 1
    assert ResendEmulator(state_dir).count() == 0  # nothing was sent
    assert list((tmp_path / "reports").iterdir()) == []
    gauges = health_gauges(pushed)
    assert {name: up for name, (up, _) in gauges.items()} == dict.fromkeys(SERVICE_NAMES, 1.0)
    assert gauges["app_database"][1] == pytest.approx(checks["app_database"]["latency_ms"] / 1000)


async def test_direct_invocation_yields_one_result_per_service(
    migrated_url: str, tmp_path: Path, state_dir: Path
) -> None:
    context = dg.build_asset_check_context(
        resources=resources(migrated_url, tmp_path, state_dir), instance=DagsterInstance.get()
    )
    results = [r async for r in check_services(context, HealthCheckConfig(check_timeout_s=5))]
    del context
    gc.collect()  # tear the resources down now, not at interpreter exit
    assert [r.asset_key.to_user_string() for r in results] == SERVICE_NAMES
    assert all(r.passed for r in results)
    assert all(r.severity == dg.AssetCheckSeverity.ERROR for r in results)


# -- failures ---------------------------------------------------------------------------------------


def test_database_pointing_nowhere_fails_its_check_and_the_run(
    tmp_path: Path, state_dir: Path, pushed: list[tuple[str, CollectorRegistry]]
) -> None:
    result = run_health_check(NOWHERE, tmp_path, state_dir)
    assert not result.success
    checks = evaluations(result)
    database = checks["app_database"]
    assert database["passed"] is False
    assert "OperationalError" in database["error"]
    assert "127.0.0.1" in database["error"]
    # The other services are fine, and their checks still ran and passed.
    assert [checks[n]["passed"] for n in SERVICE_NAMES[1:]] == [True, True, True]
    assert "app_database: healthy" in failure_message(result)
    assert "SENTINEL-db-pw" not in everything_recorded(result)
    gauges = health_gauges(pushed)
    assert {name: up for name, (up, _) in gauges.items()} == {
        "app_database": 0.0,
        "cloudflare_stream_api": 1.0,
        "resend_api": 1.0,
        "report_storage": 1.0,
    }


def test_database_behind_its_migrations_fails(tmp_path: Path, state_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    result = run_health_check(url, tmp_path, state_dir)
    assert not result.success
    database = evaluations(result)["app_database"]
    assert database["passed"] is False
    assert "schema at revision none" in database["error"]
    assert "alianza-jobs db upgrade" in database["error"]


def test_platform_tables_that_cannot_hold_what_the_jobs_write_fail(
    postgres_url: str, tmp_path: Path, state_dir: Path
) -> None:
    run_async(_migrate(postgres_url))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE streamings ALTER COLUMN duration TYPE integer USING NULL")
        conn.execute("ALTER TABLE email_queue DROP COLUMN sent_at")
    result = run_health_check(postgres_url, tmp_path, state_dir)
    assert not result.success
    database = evaluations(result)["app_database"]
    assert database["passed"] is False
    assert database["error"] == (
        "ProbeError: streamings.duration: streamings.duration is integer, which cannot hold a "
        "duration such as 12.5 s; double precision, real, numeric or text would fit "
        "(and 1 more: `alianza-jobs db check`)"
    )


def test_revoked_credentials_fail_both_api_checks(
    migrated_url: str, tmp_path: Path, state_dir: Path
) -> None:
    StreamEmulator(state_dir).configure(revoke_token=STREAM_TOKEN)
    ResendEmulator(state_dir).configure(revoke_key=RESEND_KEY)
    result = run_health_check(migrated_url, tmp_path, state_dir)
    assert not result.success
    checks = evaluations(result)
    stream, resend = checks["cloudflare_stream_api"], checks["resend_api"]
    assert (stream["passed"], stream["status"], stream["code"]) == (False, 401, "unauthorized")
    assert (resend["passed"], resend["status"], resend["code"]) == (False, 403, "invalid_api_key")
    assert "Authentication error" in stream["error"]
    assert (checks["app_database"]["passed"], checks["report_storage"]["passed"]) == (True, True)
    message = failure_message(result)
    assert "cloudflare_stream_api: healthy" in message
    assert "resend_api: healthy" in message
    assert "app_database" not in message
    recorded = everything_recorded(result)
    assert STREAM_TOKEN not in recorded
    assert RESEND_KEY not in recorded


def test_a_slow_api_fails_on_its_deadline_without_holding_up_the_rest(
    migrated_url: str, tmp_path: Path, state_dir: Path
) -> None:
    # Stream holds the probe's request (its first) until the probe gives up: slower than any
    # deadline. The deadline leaves the other checks ample time on a loaded machine, and the cut
    # comes within a margin of it that holds there too.
    StreamEmulator(state_dir).configure(hold_requests=[1])
    result = run_health_check(migrated_url, tmp_path, state_dir, check_timeout_s=3)
    assert not result.success
    checks = evaluations(result)
    stream = checks["cloudflare_stream_api"]
    assert stream["passed"] is False
    assert stream["error"] == "no answer within 3 s"
    assert 3_000 <= stream["latency_ms"] < 3_000 + 5_000
    assert checks["resend_api"]["passed"] is True


def test_unwritable_report_storage_fails(
    migrated_url: str, tmp_path: Path, state_dir: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the report directory should be")
    result = run_health_check(
        migrated_url, tmp_path, state_dir, reports=ReportStorage(directory=str(blocker / "reports"))
    )
    assert not result.success
    storage = evaluations(result)["report_storage"]
    assert storage["passed"] is False
    assert "Error" in storage["error"]
    assert "not-a-directory" in storage["error"]


# -- the Resend probe's reading of answers the emulator does not give --------------------------------

REAL_RESEND = "https://api.resend.test"


def _real_resend() -> ResendEmail:
    return ResendEmail(api_key=RESEND_KEY, base_url=REAL_RESEND)


async def _probe(resend: ResendEmail) -> task.ProbeResult:
    return await task.measure(
        "resend_api", lambda: task.probe_resend(resend), timeout_s=5, secrets=[RESEND_KEY]
    )


@pytest.mark.parametrize(
    ("status", "body", "ok", "expected"),
    [
        # A sending-only key: valid, refused everything but sending.
        (
            401,
            {"statusCode": 401, "name": "restricted_api_key", "message": "restricted"},
            True,
            "sending_only",
        ),
        (404, {"statusCode": 404, "name": "not_found", "message": "Email not found"}, True, "full"),
        (
            400,
            {"statusCode": 400, "name": "validation_error", "message": "API key is invalid"},
            False,
            "validation_error",
        ),
        (
            401,
            {"statusCode": 401, "name": "missing_api_key", "message": "Missing API key"},
            False,
            "missing_api_key",
        ),
        (503, None, False, "http_503"),
        (404, None, False, "http_404"),  # a 404 that is not Resend's: wrong base URL
    ],
)
async def test_resend_probe_reads_the_answer(
    status: int, body: dict[str, Any] | None, ok: bool, expected: str
) -> None:
    with respx.mock(assert_all_called=True) as router:
        route = router.get(f"{REAL_RESEND}/emails/{resend_api.PROBE_EMAIL_ID}")
        route.respond(status, json=body) if body else route.respond(status, text="<html>no</html>")
        result = await _probe(_real_resend())
    [request] = route.calls
    assert request.request.headers["authorization"] == f"Bearer {RESEND_KEY}"
    assert result.ok is ok
    if ok:
        assert result.details["key_access"] == expected
    else:
        assert result.details["code"] == expected
        assert RESEND_KEY not in (result.error or "")


async def test_stream_probe_rejects_a_200_that_is_not_a_listing() -> None:
    stream = CloudflareStream(
        account_id="acc", api_token=STREAM_TOKEN, base_url="https://api.cloudflare.test/client/v4"
    )
    with respx.mock(assert_all_called=True) as router:
        route = router.get("https://api.cloudflare.test/client/v4/accounts/acc/stream")
        route.respond(200, json={"success": True, "result": {"not": "a list"}})
        result = await task.measure(
            "cloudflare_stream_api",
            lambda: task.probe_stream(stream),
            timeout_s=5,
            secrets=[STREAM_TOKEN],
        )
    assert route.calls.last.request.url.params["limit"] == "1"
    assert result.ok is False
    assert result.details["code"] == "malformed_response"


async def test_network_failure_is_a_failed_check_without_the_request_headers() -> None:
    with respx.mock(assert_all_called=True) as router:
        router.get(f"{REAL_RESEND}/emails/{resend_api.PROBE_EMAIL_ID}").mock(
            side_effect=httpx.ConnectError("connection refused")
        )
        result = await _probe(_real_resend())
    assert result.ok is False
    assert result.details["code"] == "network_error"
    assert "ConnectError" in (result.error or "")
    assert RESEND_KEY not in (result.error or "")


# -- definitions ------------------------------------------------------------------------------------


def test_job_schedule_and_checks_are_declared(tmp_path: Path) -> None:
    schedule = task.TASK.schedule(task.job, load_settings())
    assert schedule is not None
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("* * * * *", "UTC")
    defs = dg.Definitions(
        assets=SERVICES,
        asset_checks=task.asset_checks,
        jobs=[task.job],
        schedules=[schedule],
        resources=resources(f"sqlite:///{tmp_path / 'a.db'}", tmp_path, tmp_path / "emu"),
    )
    job_def = defs.resolve_job_def("health_check")
    # 30 s, one attempt, a minute to start: the run monitor's backstop.
    assert job_def.tags[MAX_RUNTIME_TAG] == "90"
    [node] = job_def.nodes
    assert isinstance(node.definition, dg.OpDefinition)
    assert node.definition.retry_policy is None
    keys = {key.asset_key for key in task.check_services.check_keys}
    assert keys == {AssetKey(name) for name in SERVICE_NAMES}
    assert all(spec.blocking for spec in task.CHECK_SPECS)
