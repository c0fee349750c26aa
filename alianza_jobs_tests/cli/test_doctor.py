"""``alianza-jobs doctor``: every check passes on a ready deployment, and each fails on its own.

A production-shaped environment (``ALIANZA_ENV=prod``): the app's Postgres database migrated,
Dagster's storage in Postgres from ``deploy/dagster.yaml`` (``DAGSTER_PG_*``), the APIs served by
``alianza-jobs emulate`` on a loopback port requiring the configured token and key. Daemon
heartbeats are written the way the daemon writes them (there is no daemon here; the e2e suite runs
the doctor against a real one). The code location is the runtime test location, whose two
schedules default to RUNNING.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteInstigatorOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.types import DaemonHeartbeat
from dagster_shared.error import SerializableErrorInfo

from alianza_jobs.cli import cli
from alianza_jobs.cli.doctor import CHECKS
from alianza_jobs_tests.conftest import REPO
from alianza_jobs_tests.processes import free_port, stop_process, wait_until_answers

MODULE = "alianza_jobs_tests.platform.defs"
ACCOUNT = "doctor0account0000000000000000001"
TOKEN = "cf-doctor-token-0123456789abcdef"
RESEND_KEY = "re_doctor_key_0123456789abcdef"
PG_PASSWORD = "pg-doctor-password-0123456789"
DB_PASSWORD = "app-db-password-0123456789"
WEBHOOK_SECRET = "whsec-doctor-0123456789abcdef"
SECRETS = (TOKEN, RESEND_KEY, PG_PASSWORD, DB_PASSWORD, WEBHOOK_SECRET)
# Each check's deadline: the checks that must pass get it on a loaded machine too (5 s was close:
# a whole doctor run took 4 s with both cores busy); those that must fail do not wait for it.
CHECK_TIMEOUT_S = 20


# -- the deployment being checked ---------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    state = tmp_path_factory.mktemp("emulator")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alianza_jobs.cli",
            "emulate",
            "--port",
            str(port),
            "--state-dir",
            str(state),
            "--require-token",
            TOKEN,
            "--require-account",
            ACCOUNT,
            "--require-resend-key",
            RESEND_KEY,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/_emulator/health", proc, timeout_s=30, what="the emulator")
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def app_db(make_postgres_database: Callable[[], str]) -> str:
    """A migrated app database, reached with a password (trust auth ignores it) to check masking."""
    url = make_postgres_database()
    for command in ("platform-stand-in", "upgrade"):
        prepared = subprocess.run(
            [sys.executable, "-m", "alianza_jobs.cli", "db", command],
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert prepared.returncode == 0, prepared.stderr
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")


def start_receiver(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``alianza-jobs webhooks serve`` on a free port, answering its health route."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alianza_jobs.cli", "webhooks", "serve", "--port", str(port)],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/healthz", proc, timeout_s=30, what="the webhook receiver")
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


@pytest.fixture(scope="module")
def receiver(app_db: str, emulator: str) -> Iterator[str]:
    proc, url = start_receiver(
        {
            "ALIANZA_ENV": "prod",
            "DATABASE_URL": app_db,
            "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
            "CLOUDFLARE_STREAM_API_TOKEN": TOKEN,
            "RESEND_API_KEY": RESEND_KEY,
            "EMAIL_FROM": "Alianza <jobs@alianza.test>",
            "CLOUDFLARE_STREAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    )
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def dagster_db(make_postgres_database: Callable[[], str]) -> dict[str, str]:
    info = psycopg.conninfo.conninfo_to_dict(make_postgres_database())
    return {
        "DAGSTER_PG_HOST": str(info.get("host") or "127.0.0.1"),
        "DAGSTER_PG_PORT": str(info.get("port") or 5432),
        "DAGSTER_PG_USERNAME": str(info.get("user") or "postgres"),
        "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        "DAGSTER_PG_DB": str(info["dbname"]),
    }


@pytest.fixture
def prod(
    monkeypatch: pytest.MonkeyPatch,
    dagster_home: Path,
    emulator: str,
    app_db: str,
    dagster_db: dict[str, str],
    receiver: str,
) -> Iterator[DagsterInstance]:
    """The environment of a ready prod deployment; yields its Dagster instance."""
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        "ALIANZA_ENV": "prod",
        "DATABASE_URL": app_db,
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
        "CLOUDFLARE_STREAM_API_TOKEN": TOKEN,
        "CLOUDFLARE_API_BASE_URL": f"{emulator}/client/v4",
        "RESEND_API_KEY": RESEND_KEY,
        "RESEND_API_BASE_URL": emulator,
        "EMAIL_FROM": "Alianza <jobs@alianza.test>",
        "CLOUDFLARE_STREAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ALIANZA_WEBHOOKS_URL": receiver,
        **dagster_db,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    instance = DagsterInstance.get()
    # One Dagster database serves the module: leave it as each test found it.
    instance.wipe_daemon_heartbeats()
    for state in instance.all_instigator_state():
        instance.delete_instigator_state(state.instigator_origin_id, state.selector_id)
    try:
        yield instance
    finally:
        instance.dispose()


def heartbeat(
    instance: DagsterInstance,
    *,
    age_s: float = 0.0,
    errors: list[SerializableErrorInfo] | None = None,
) -> None:
    """What a live daemon writes every 30 s, for each daemon the instance requires."""
    for daemon_type in instance.get_required_daemon_types():
        instance.add_daemon_heartbeat(
            DaemonHeartbeat(time.time() - age_s, daemon_type, "doctor-test", errors or [])
        )


def doctor(*args: str) -> tuple[Result, dict[str, tuple[bool, str]]]:
    result = CliRunner().invoke(
        cli, ["-m", MODULE, "doctor", "--timeout", str(CHECK_TIMEOUT_S), *args]
    )
    lines: dict[str, tuple[bool, str]] = {}
    for line in result.output.splitlines():
        status, _, rest = line.partition("  ")
        name = next((c for c in CHECKS if rest.strip().startswith(c)), None)
        if status.strip() in ("ok", "FAIL") and name:
            lines[name] = (status.strip() == "ok", rest.strip()[len(name) :].strip())
    return result, lines


def assert_no_secret(result: Result) -> None:
    for secret in SECRETS:
        assert secret not in result.output


def failed(lines: dict[str, tuple[bool, str]]) -> set[str]:
    return {name for name, (ok, _) in lines.items() if not ok}


# -- the happy paths ----------------------------------------------------------------------------


def test_a_ready_prod_deployment_passes_every_check(prod: DagsterInstance) -> None:
    heartbeat(prod)

    result, lines = doctor()

    assert result.exit_code == 0, result.output
    assert list(lines) == list(CHECKS)
    assert not failed(lines)
    assert "ALIANZA_ENV=prod" in lines["settings"][1]
    assert "at revision" in lines["app database"][1]
    assert "PostgresRunStorage" in lines["dagster storage"][1]
    assert lines["schedules"][1] == "2 of 2 running"
    assert lines["fresh tables"][1] == "0 of 1 fresh; no verdict yet: demo_table"
    assert "sending-only" not in lines["resend api"][1]
    assert lines["stream webhooks"][1].endswith("answers; 0 deliveries waiting")
    assert result.output.rstrip().endswith("all 10 checks passed")
    assert_no_secret(result)


def test_local_with_the_embedded_emulators_passes(
    monkeypatch: pytest.MonkeyPatch, dagster_home: Path
) -> None:
    for command in (["db", "platform-stand-in"], ["db", "upgrade"]):
        prepared = CliRunner().invoke(cli, command)
        assert prepared.exit_code == 0, prepared.output
    instance = DagsterInstance.get()
    heartbeat(instance)
    instance.dispose()
    # As `make dev` starts it: the emulated Stream's secret, no variable to set.
    proc, url = start_receiver({"DAGSTER_HOME": str(dagster_home)})
    monkeypatch.setenv("ALIANZA_WEBHOOKS_URL", url)
    try:
        result, lines = doctor()
    finally:
        stop_process(proc)

    assert result.exit_code == 0, result.output
    assert "none required" in lines["secrets"][1]
    assert "in-process emulator" in lines["stream api"][1]
    assert "SqliteRunStorage" in lines["dagster storage"][1]


# -- each check failing -------------------------------------------------------------------------


def test_unparseable_settings_fail_and_what_depends_on_them_is_not_checked(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat(prod)
    monkeypatch.setenv("ALIANZA_ENV", "staging")

    result, lines = doctor()

    assert result.exit_code == 1
    assert "ALIANZA_ENV='staging' is not one of" in lines["settings"][1]
    assert failed(lines) == {
        "settings",
        "secrets",
        "app database",
        "schedules",
        "fresh tables",
        "stream api",
        "resend api",
        "stream webhooks",
    }
    assert lines["app database"][1] == "not checked: settings did not load"
    assert lines["daemon"][0] and lines["dagster storage"][0]


def test_a_missing_secret_is_named_and_no_value_is_shown(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat(prod)
    monkeypatch.delenv("RESEND_API_KEY")

    result, lines = doctor()

    assert result.exit_code == 1
    assert lines["secrets"] == (False, "missing for ALIANZA_ENV=prod: RESEND_API_KEY")
    assert_no_secret(result)


def test_a_key_that_is_not_a_resend_key_fails(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat(prod)
    monkeypatch.setenv("RESEND_API_KEY", "sk_live_0123456789")

    _, lines = doctor()

    assert "not a Resend API key" in lines["secrets"][1]
    assert "sk_live_0123456789" not in lines["secrets"][1]


def test_an_unreachable_app_database_fails_without_showing_its_password(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat(prod)
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{free_port()}/alianza"
    )

    result, lines = doctor()

    assert result.exit_code == 1
    assert failed(lines) == {"app database", "stream webhooks"}
    assert "the app database is not ready" in lines["stream webhooks"][1]
    assert "refused" in lines["app database"][1].lower(), lines["app database"]
    assert_no_secret(result)


def test_an_app_database_that_is_not_migrated_fails(
    prod: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    make_postgres_database: Callable[[], str],
) -> None:
    heartbeat(prod)
    monkeypatch.setenv("DATABASE_URL", make_postgres_database())

    _, lines = doctor()

    assert failed(lines) == {"app database", "stream webhooks"}
    assert "the app database is not ready" in lines["stream webhooks"][1]
    assert "alianza-jobs db upgrade" in lines["app database"][1]


def test_unreachable_dagster_storage_fails_and_its_dependents_are_not_checked(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PG_PORT", str(free_port()))

    result, lines = doctor()

    assert result.exit_code == 1
    assert failed(lines) == {"dagster storage", "daemon", "schedules", "fresh tables"}
    assert lines["daemon"][1] == "not checked: Dagster's storage is not reachable"
    assert_no_secret(result)


def test_a_missing_dagster_pg_variable_is_named(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")

    _, lines = doctor()

    assert "DAGSTER_PG_PASSWORD" in lines["dagster storage"][1]


def test_sqlite_dagster_storage_outside_local_fails(
    prod: DagsterInstance, dagster_home: Path
) -> None:
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")  # the local config

    _, lines = doctor()

    assert failed(lines) >= {"dagster storage"}
    assert "must share Postgres storage" in lines["dagster storage"][1]


def test_no_daemon_heartbeat_fails(prod: DagsterInstance) -> None:
    result, lines = doctor()

    assert result.exit_code == 1
    assert failed(lines) == {"daemon"}
    assert "is `dagster-daemon run` running?" in lines["daemon"][1]


def test_a_silent_daemon_fails(prod: DagsterInstance) -> None:
    heartbeat(prod, age_s=600)

    _, lines = doctor()

    assert failed(lines) == {"daemon"}
    assert re.search(r"silent for 60\d s: .*SCHEDULER", lines["daemon"][1]), lines["daemon"]


def test_a_daemon_reporting_errors_fails_with_the_first_one(prod: DagsterInstance) -> None:
    error = SerializableErrorInfo("ProgrammingError: syntax error at or near $1\nmore", [], "E")
    heartbeat(prod, errors=[error])

    _, lines = doctor()

    assert failed(lines) == {"daemon"}
    assert "error(s): ProgrammingError: syntax error at or near $1" in lines["daemon"][1]


def test_a_stopped_schedule_fails_by_name(prod: DagsterInstance) -> None:
    heartbeat(prod)
    origin = RemoteInstigatorOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                loadable_target_origin=LoadableTargetOrigin(module_name=MODULE),
                location_name="alianza_jobs",
            ),
            repository_name="__repository__",
        ),
        instigator_name="flaky_schedule",
    )
    prod.add_instigator_state(
        InstigatorState(
            origin,
            InstigatorType.SCHEDULE,
            InstigatorStatus.STOPPED,
            ScheduleInstigatorData("*/7 * * * *", start_timestamp=None),
        )
    )

    result, lines = doctor()

    assert result.exit_code == 1
    assert failed(lines) == {"schedules"}
    assert lines["schedules"][1].startswith("1 of 2 stopped: flaky_schedule")


def judge(instance: DagsterInstance, new: FreshnessState, previous: FreshnessState) -> None:
    """What the freshness daemon writes when it changes its verdict on the test table."""
    instance.report_runless_asset_event(
        FreshnessStateChange(
            key=AssetKey("demo_table"),
            new_state=new,
            previous_state=previous,
            state_change_timestamp=time.time(),
        )
    )


def test_a_stale_table_fails_by_name_until_it_is_fresh_again(prod: DagsterInstance) -> None:
    heartbeat(prod)
    try:
        judge(prod, FreshnessState.FAIL, FreshnessState.UNKNOWN)
        result, lines = doctor()
        assert result.exit_code == 1
        assert failed(lines) == {"fresh tables"}
        assert lines["fresh tables"][1].startswith("1 of 1 stale: demo_table (never updated)")

        prod.report_runless_asset_event(AssetMaterialization("demo_table"))
        result, lines = doctor()
        assert lines["fresh tables"][1].startswith(
            "1 of 1 stale: demo_table (last updated 0 min ago)"
        )

        judge(prod, FreshnessState.PASS, FreshnessState.FAIL)
        result, lines = doctor()
        assert result.exit_code == 0, result.output
        assert lines["fresh tables"] == (True, "1 of 1 fresh")
    finally:
        # One Dagster database serves the module: the next test finds the table unjudged again.
        judge(prod, FreshnessState.UNKNOWN, FreshnessState.PASS)


@pytest.mark.parametrize(
    ("variable", "value", "check", "expected"),
    [
        ("CLOUDFLARE_STREAM_API_TOKEN", "cf-wrong-token-0123456789", "stream api", "401"),
        ("CLOUDFLARE_ACCOUNT_ID", "someone-else", "stream api", "403"),
        ("RESEND_API_KEY", "re_wrong_key_0123456789", "resend api", "403"),
    ],
)
def test_an_api_refusing_the_credentials_fails(
    prod: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    check: str,
    expected: str,
) -> None:
    heartbeat(prod)
    monkeypatch.setenv(variable, value)

    result, lines = doctor()

    assert failed(lines) == {check}
    assert expected in lines[check][1], lines[check]
    assert value not in result.output or variable == "CLOUDFLARE_ACCOUNT_ID"
    assert_no_secret(result)


def test_an_unreachable_api_fails(prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeat(prod)
    monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", f"http://127.0.0.1:{free_port()}/client/v4")

    _, lines = doctor()

    assert failed(lines) == {"stream api"}
    assert "network_error" in lines["stream api"][1] or "Connect" in lines["stream api"][1]


def test_no_receiver_fails_naming_the_command(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat(prod)
    monkeypatch.setenv("ALIANZA_WEBHOOKS_URL", f"http://127.0.0.1:{free_port()}")

    _, lines = doctor()

    assert failed(lines) == {"stream webhooks"}
    assert "alianza-jobs webhooks serve" in lines["stream webhooks"][1]


def test_a_missing_webhook_secret_fails_and_is_named(
    prod: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat(prod)
    monkeypatch.delenv("CLOUDFLARE_STREAM_WEBHOOK_SECRET")

    result, lines = doctor()

    assert failed(lines) == {"stream webhooks"}
    assert "CLOUDFLARE_STREAM_WEBHOOK_SECRET is not set" in lines["stream webhooks"][1]
    assert_no_secret(result)


def test_deliveries_nobody_applies_fail(prod: DagsterInstance, app_db: str) -> None:
    heartbeat(prod)
    plain = app_db.replace(f":{DB_PASSWORD}@", "@")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stream_webhook_deliveries (body_sha256, uid, payload, received_at) "
            "VALUES (%s, %s, '{}', now() - interval '10 minutes')",
            ("d" * 64, "e" * 32),
        )
    try:
        _, lines = doctor()
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("DELETE FROM stream_webhook_deliveries")

    assert failed(lines) == {"stream webhooks"}
    assert "1 deliveries waiting" in lines["stream webhooks"][1]
    assert "queue_work_sensor" in lines["stream webhooks"][1]
