"""``deploy/``: the production instance config keeps the local policies, takes its storage from the
environment only, and works against Postgres; the env examples, units and Procfile agree with it.
No long-running processes here: these run in seconds."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from dagster import DagsterInstance, asset, materialize
from dagster._core.run_coordinator import QueuedRunCoordinator

from alianza_jobs.redaction import SECRET_ENV_VARS
from alianza_jobs.settings import REQUIRED_OUTSIDE_LOCAL
from alianza_jobs_tests.e2e.harness import (
    BIN,
    PRODUCTION_CONFIG,
    PRODUCTION_WORKSPACE,
    REPO,
    TEST_OVERRIDES,
    procfile,
)

DEPLOY = REPO / "deploy"
PG_VARS = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.fixture
def production_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_postgres_database: Callable[[], str]
) -> Path:
    info = psycopg.conninfo.conninfo_to_dict(make_postgres_database())
    for name, value in zip(
        PG_VARS,
        (
            info.get("host"),
            info.get("port") or 5432,
            info.get("user"),
            "unused-trust-auth",
            info["dbname"],
        ),
        strict=True,
    ):
        monkeypatch.setenv(name, str(value))
    home = tmp_path / "prod_home"
    home.mkdir()
    shutil.copyfile(PRODUCTION_CONFIG, home / "dagster.yaml")
    return home


def test_production_keeps_the_local_policies() -> None:
    local, prod = _load(REPO / "dagster.yaml"), _load(PRODUCTION_CONFIG)

    for section in ("run_monitoring", "run_retries", "retention", "telemetry"):
        assert prod[section] == local[section], section
    assert (
        prod["run_coordinator"]["class"]
        == local["run_coordinator"]["class"]
        == "QueuedRunCoordinator"
    )
    limits = prod["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limits == local["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert limits == [
        {"key": "alianza/job", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    assert prod["run_retries"]["retry_on_asset_or_op_failure"] is False
    # The e2e suite changes only what it must to see recoveries within minutes.
    assert set(TEST_OVERRIDES) == {"run_monitoring", "run_coordinator.config"}


def test_storage_comes_from_the_environment_only() -> None:
    storage = _load(PRODUCTION_CONFIG)["storage"]["postgres"]

    assert "postgres_url" not in storage
    fields = storage["postgres_db"]
    assert {
        name: fields[name] for name in ("hostname", "port", "username", "password", "db_name")
    } == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    assert fields["scheme"] == "postgresql+psycopg2"


def test_the_instance_loads_and_records_a_run_in_postgres(production_home: Path) -> None:
    @asset
    def probe() -> int:
        return 1

    instance = DagsterInstance.from_config(str(production_home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert (
            instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds == 7200
        )
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        # Writing a run's events is where a psycopg 3 connection fails (NOTIFY with a parameter).
        result = materialize([probe], instance=instance)
        assert result.success
        assert instance.get_run_records()[0].dagster_run.run_id == result.run_id
        assert instance.get_latest_materialization_event(probe.key) is not None
    finally:
        instance.dispose()


def test_without_the_driver_line_every_event_write_fails(
    production_home: Path, tmp_path: Path
) -> None:
    """Why ``scheme: postgresql+psycopg2`` is there: SQLAlchemy 2.1 maps ``postgresql://`` to
    psycopg 3, and dagster-postgres's event writes then fail. If this starts passing after an
    upgrade, the line can go."""
    config = _load(PRODUCTION_CONFIG)
    del config["storage"]["postgres"]["postgres_db"]["scheme"]
    (production_home / "dagster.yaml").write_text(yaml.safe_dump(config))

    @asset
    def probe() -> int:
        return 1

    instance = DagsterInstance.from_config(str(production_home))
    try:
        with pytest.raises(Exception, match=r'syntax error at or near "\$1"'):
            materialize([probe], instance=instance)
    finally:
        instance.dispose()


def test_a_missing_storage_variable_is_named(
    production_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")

    with pytest.raises(Exception, match="DAGSTER_PG_PASSWORD"):
        DagsterInstance.from_config(str(production_home))


@pytest.mark.parametrize("env", ["dev", "uat", "prod"])
def test_each_env_example_names_every_variable_and_holds_no_secret(env: str) -> None:
    text = (DEPLOY / "env" / f"{env}.env.example").read_text()
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )

    assert values["ALIANZA_ENV"] == env
    for name in (*REQUIRED_OUTSIDE_LOCAL, *PG_VARS, "DAGSTER_HOME", "DAGSTER_WEBSERVER_URL"):
        assert name in values, name
    for name in (*SECRET_ENV_VARS, "DATABASE_URL"):
        assert values.get(name, "") == "", f"{name} must be left empty in an example"
    # Docker's --env-file takes values literally: no quotes, no `export`.
    assert not [v for v in values.values() if v.startswith(("'", '"'))]
    assert not [k for k in values if k.startswith("export ")]


def test_the_units_and_the_procfile_run_the_same_two_processes() -> None:
    commands = procfile()
    assert set(commands) == {"web", "daemon", "webhooks"}
    assert commands["webhooks"].startswith("alianza-jobs webhooks serve ")
    assert commands["web"].startswith("dagster-webserver -w deploy/workspace.yaml ")
    assert commands["daemon"] == "dagster-daemon run -w deploy/workspace.yaml"
    assert _load(PRODUCTION_WORKSPACE)["load_from"] == [
        {
            "python_module": {
                "module_name": "alianza_jobs.definitions",
                "location_name": "alianza_jobs",
            }
        }
    ]

    for unit, program in (
        ("webserver", "dagster-webserver -w"),
        ("daemon", "dagster-daemon run -w"),
        ("webhooks", "alianza-jobs webhooks serve"),
    ):
        parser = _unit(unit)
        service = parser["Service"]
        assert program in service["ExecStart"]
        if unit != "webhooks":
            assert "/opt/alianza-jobs/deploy/workspace.yaml" in service["ExecStart"]
        assert service["EnvironmentFile"] == "/etc/alianza-jobs/alianza-jobs.env"
        assert service["Restart"] == "always"
        assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert "-h 127.0.0.1 " in _unit("webserver")["Service"]["ExecStart"]
    assert "--host 127.0.0.1 " in _unit("webhooks")["Service"]["ExecStart"]
    # Runs are the daemon's child processes: a daemon restart must not kill them (see the unit).
    assert _unit("daemon")["Service"]["KillMode"] == "process"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / f"alianza-jobs-{name}.service")
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """Syntax and directives, as systemd reads them (paths pointed at this machine's virtualenv,
    since verify also checks that ExecStart's program exists)."""
    for unit in ("webserver", "daemon", "webhooks"):
        text = (DEPLOY / "systemd" / f"alianza-jobs-{unit}.service").read_text()
        text = text.replace("/opt/alianza-jobs/.venv/bin", str(BIN))
        path = tmp_path / f"alianza-jobs-{unit}.service"
        path.write_text(text)
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if str(path) in line or "Unknown" in line or "Invalid" in line
        ]
        assert not problems, problems
