"""Settings fail at load time with one line naming the variable, never echoing a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from alianza_jobs.db.schema_map import SchemaMapError, default_map, load_schema_map
from alianza_jobs.definitions import build_defs
from alianza_jobs.resources import build_resources
from alianza_jobs.settings import Environment, SettingsError, load_settings, normalize_database_url
from alianza_jobs_tests.db.helpers import DRIZZLE_SCHEMA_MAP

DEPLOYED = {
    "DATABASE_URL": "postgresql://app:s3cr3t-pass@db.internal:5432/alianza",
    "CLOUDFLARE_ACCOUNT_ID": "acc",
    "CLOUDFLARE_STREAM_API_TOKEN": "cf-token-value",
    "RESEND_API_KEY": "re_live_key_value",
    "EMAIL_FROM": "Alianza <jobs@alianza.example>",
}


def test_local_defaults_need_nothing(tmp_path) -> None:
    settings = load_settings({"DAGSTER_HOME": str(tmp_path)})
    assert settings.env is Environment.LOCAL
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'alianza.db'}"
    assert settings.stream_emulated and settings.resend_emulated
    assert settings.cloudflare_api_base_url == "https://api.cloudflare.com/client/v4"
    assert settings.resend_api_base_url == "https://api.resend.com"


def test_tokens_in_local_switch_off_the_emulators() -> None:
    settings = load_settings({"CLOUDFLARE_STREAM_API_TOKEN": "t", "RESEND_API_KEY": "re_x"})
    assert not settings.stream_emulated and not settings.resend_emulated


def test_unknown_environment() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"ALIANZA_ENV": "staging"})
    assert str(err.value) == "ALIANZA_ENV='staging' is not one of local, dev, uat, prod"


def test_missing_secrets_outside_local_are_named_together() -> None:
    environ = dict(DEPLOYED, ALIANZA_ENV="prod")
    del environ["RESEND_API_KEY"], environ["CLOUDFLARE_STREAM_API_TOKEN"]
    with pytest.raises(SettingsError) as err:
        load_settings(environ)
    message = str(err.value)
    assert message == (
        "CLOUDFLARE_STREAM_API_TOKEN, RESEND_API_KEY must be set when ALIANZA_ENV=prod (missing)"
    )
    assert "\n" not in message


def test_deployed_environment_loads_with_everything_set() -> None:
    settings = load_settings(dict(DEPLOYED, ALIANZA_ENV="uat"))
    assert settings.env is Environment.UAT
    assert settings.database_url.startswith("postgresql+psycopg://app:s3cr3t-pass@db.internal")
    assert not settings.stream_emulated


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("not a url", "is not a valid database URL"),
        ("mysql://u:hunter22@h/db", "unsupported backend 'mysql'"),
        ("postgresql://u:hunter22@/db", "has no host"),
        ("postgresql://u:hunter22@host", "names no database"),
        ("sqlite://", "must name a SQLite file"),
        ("postgres//u:hunter22@host/db", "is not a valid database URL"),
    ],
)
def test_malformed_database_url_is_named_without_its_password(raw: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"DATABASE_URL": raw})
    message = str(err.value)
    assert message.startswith("DATABASE_URL=")
    assert fragment in message
    assert "hunter22" not in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("sqlite:///tmp/x.db", "sqlite+aiosqlite:///tmp/x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
    ],
)
def test_plain_urls_get_the_async_driver(raw: str, expected: str) -> None:
    assert normalize_database_url(raw) == expected


def test_bad_log_level_and_booleans() -> None:
    with pytest.raises(SettingsError, match="LOG_LEVEL='loud'"):
        load_settings({"LOG_LEVEL": "loud"})
    with pytest.raises(SettingsError, match="METRICS_ENABLED='maybe' is not a boolean"):
        load_settings({"METRICS_ENABLED": "maybe"})
    with pytest.raises(SettingsError, match="PROMETHEUS_PUSHGATEWAY_URL must be set"):
        load_settings({"METRICS_ENABLED": "true"})
    with pytest.raises(SettingsError, match="RESEND_API_BASE_URL='ftp://x' is not an http"):
        load_settings({"RESEND_API_BASE_URL": "ftp://x"})


def test_schema_map_file_reaches_the_database_resource() -> None:
    settings = load_settings({"ALIANZA_SCHEMA_MAP": str(DRIZZLE_SCHEMA_MAP)})
    assert settings.schema_map_path == str(DRIZZLE_SCHEMA_MAP)
    database = build_resources(settings)["database"]
    assert database.schema_map == str(DRIZZLE_SCHEMA_MAP)
    assert database.platform_map() == load_schema_map(DRIZZLE_SCHEMA_MAP)
    assert database.platform_map().email_queue.column("to_address") == "to"
    assert database.platform_map().email_queue.status("dead") == "failed"


def test_no_schema_map_is_the_default() -> None:
    settings = load_settings({"ALIANZA_SCHEMA_MAP": "  "})
    assert settings.schema_map_path is None
    assert build_resources(settings)["database"].platform_map() == default_map()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("email_queue: [unclosed\n", "not valid YAML at line 2"),
        ("email_queue:\n  columns:\n    nope: x\n", "email_queue.columns.nope: unknown column"),
    ],
)
def test_bad_schema_map_file_fails_the_load_naming_it(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(text)
    settings = load_settings({"ALIANZA_SCHEMA_MAP": str(path)})
    with pytest.raises(SchemaMapError) as err:
        build_defs(settings)
    message = str(err.value)
    assert message.startswith(f"ALIANZA_SCHEMA_MAP {path}: ")
    assert fragment in message
    assert "\n" not in message


def test_missing_schema_map_file() -> None:
    settings = load_settings({"ALIANZA_SCHEMA_MAP": "/nonexistent/map.yaml"})
    with pytest.raises(SchemaMapError, match=r"^ALIANZA_SCHEMA_MAP /nonexistent/map\.yaml: cannot"):
        build_resources(settings)


@pytest.mark.parametrize("name", ["Alianza", "1jobs", "jobs-db", 'jobs";drop', "a" * 64])
def test_db_schema_must_be_a_plain_name(name: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"DATABASE_URL": DEPLOYED["DATABASE_URL"], "ALIANZA_DB_SCHEMA": name})
    assert str(err.value).startswith(f"ALIANZA_DB_SCHEMA={name!r} is not a plain schema name")


def test_db_schema_needs_postgres(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(
            {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "ALIANZA_DB_SCHEMA": "alianza_jobs"}
        )
    assert str(err.value) == "ALIANZA_DB_SCHEMA is for Postgres; DATABASE_URL is not Postgres"
    # The default database is SQLite too.
    with pytest.raises(SettingsError, match="ALIANZA_DB_SCHEMA is for Postgres"):
        load_settings({"ALIANZA_DB_SCHEMA": "alianza_jobs"})


def test_db_schema_with_postgres() -> None:
    environ = {"DATABASE_URL": DEPLOYED["DATABASE_URL"], "ALIANZA_DB_SCHEMA": "alianza_jobs_2"}
    assert load_settings(environ).db_schema == "alianza_jobs_2"
    assert load_settings({"DATABASE_URL": DEPLOYED["DATABASE_URL"]}).db_schema is None
