"""Process-wide settings: the one module that reads the environment, validated once at load time.

Everything in :class:`Settings` is a plain value that may be shown to a user, except
``database_url`` which is never logged. Secrets (API tokens, a database password) are never copied
into it: resources read them through ``dagster.EnvVar`` so the UI shows the variable's name, this
module only checks that they are present, and :func:`secret_values` hands the redaction the values
to mask. The few other readers here (log level, metrics target, ``DAGSTER_HOME``) serve code that
must not fail on a setting it does not need, so they read one variable each, at call time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


class SettingsError(ValueError):
    """A setting is wrong. The message is one line naming the variable and, unless secret, the value."""


class Environment(StrEnum):
    LOCAL = "local"
    DEV = "dev"
    UAT = "uat"
    PROD = "prod"


# Outside local, these must be present; in local their absence selects the embedded emulators.
REQUIRED_OUTSIDE_LOCAL = (
    "DATABASE_URL",
    "CLOUDFLARE_ACCOUNT_ID",
    "CLOUDFLARE_STREAM_API_TOKEN",
    "RESEND_API_KEY",
    "EMAIL_FROM",
)

# Every variable the app reads (besides ALIANZA_CRON_<JOB> and ALIANZA_FRESHNESS_<TABLE>_SECONDS):
# tests and benchmarks clear these so a developer's shell cannot change what a run sees.
ENV_VARIABLES = (
    "ALIANZA_ENV",
    "DATABASE_URL",
    "CLOUDFLARE_ACCOUNT_ID",
    "CLOUDFLARE_STREAM_API_TOKEN",
    "CLOUDFLARE_API_BASE_URL",
    "RESEND_API_KEY",
    "RESEND_API_BASE_URL",
    "EMAIL_FROM",
    "LOG_LEVEL",
    "METRICS_ENABLED",
    "PROMETHEUS_PUSHGATEWAY_URL",
    "ALERT_EMAIL_TO",
    "ALERT_WEBHOOK_URL",
    "DAGSTER_WEBSERVER_URL",
    "REPORTS_DIR",
    "ALIANZA_SCHEMA_MAP",
    "ALIANZA_DB_SCHEMA",
    "ALIANZA_EVENT_TRIGGERS",
    "CLOUDFLARE_STREAM_WEBHOOK_SECRET",
    "ALIANZA_WEBHOOKS_URL",
)
DEFAULT_CLOUDFLARE_API_BASE_URL = "https://api.cloudflare.com/client/v4"
DEFAULT_RESEND_API_BASE_URL = "https://api.resend.com"
DEFAULT_EMAIL_FROM = "Alianza <jobs@alianza.local>"
CRON_OVERRIDE_PREFIX = "ALIANZA_CRON_"
FRESHNESS_OVERRIDE_PREFIX = "ALIANZA_FRESHNESS_"
FRESHNESS_OVERRIDE_SUFFIX = "_SECONDS"
# Dagster refuses a freshness window shorter than a minute.
MIN_FRESHNESS_SECONDS = 60
LOG_LEVELS = ("debug", "info", "warning", "error")
DB_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

SECRET_ENV_VARS: tuple[str, ...] = (
    "CLOUDFLARE_STREAM_API_TOKEN",
    "RESEND_API_KEY",
    "CLOUDFLARE_STREAM_WEBHOOK_SECRET",
    "ALERT_WEBHOOK_URL",
    "DAGSTER_PG_PASSWORD",
)
WEBHOOK_SECRET_ENV = "CLOUDFLARE_STREAM_WEBHOOK_SECRET"  # noqa: S105 - a variable's name
# Variables that hold a URL whose password is the secret part.
SECRET_URL_ENV_VARS: tuple[str, ...] = ("DATABASE_URL", "DAGSTER_PG_URL")
# Shorter values would mask ordinary words; nobody's real token is this short.
MIN_SECRET_LEN = 6
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)@")


@dataclass(frozen=True)
class Settings:
    env: Environment
    dagster_home: Path
    database_url: str
    """SQLAlchemy async URL with the driver chosen for the user (password included: never log it)."""
    stream_emulated: bool
    resend_emulated: bool
    cloudflare_api_base_url: str
    resend_api_base_url: str
    email_from: str
    log_level: str
    metrics_enabled: bool
    pushgateway_url: str | None
    alert_email_to: list[str]
    webserver_url: str
    reports_dir: Path
    cron_overrides: Mapping[str, str] = field(default_factory=dict)
    """Job name -> cron, from ``ALIANZA_CRON_<JOB_NAME>`` variables (validated against jobs later)."""
    freshness_overrides: Mapping[str, int] = field(default_factory=dict)
    """Table -> seconds, from ``ALIANZA_FRESHNESS_<TABLE>_SECONDS``: the table's freshness window
    instead of the one derived from its job's cron (validated against the tables later)."""
    database_url_from_env: bool = False
    """DATABASE_URL is set: resources pass it as ``EnvVar`` so the UI shows the name only."""
    alert_webhook_configured: bool = False
    """ALERT_WEBHOOK_URL is set (its value embeds a credential and is not kept here)."""
    dagster_home_from_env: bool = False
    """DAGSTER_HOME is set, rather than defaulted to ``.alianza/dagster_home``."""
    schema_map_path: str | None = None
    """``ALIANZA_SCHEMA_MAP``: the YAML schema map of the platform's tables (None: the default).
    Read by the database resource (``alianza_jobs.db.schema_map``), which fails the load naming
    the file and the key when it cannot be used."""
    db_schema: str | None = None
    """The Postgres schema of the jobs' own tables (``ALIANZA_DB_SCHEMA``); None: the default."""
    event_triggers: bool = True
    """``ALIANZA_EVENT_TRIGGERS`` (default true): queue schedules skip ticks with nothing due and
    work sensors launch runs when work appears. False: every tick launches a run and no sensor
    does, as the TypeScript package's crons did (benchmarks compare the two)."""
    webhooks_url: str = "http://127.0.0.1:8790"
    """``ALIANZA_WEBHOOKS_URL``: where the webhook receiver listens, for ``doctor`` to ask."""
    webhook_secret_configured: bool = False
    """CLOUDFLARE_STREAM_WEBHOOK_SECRET is set (the receiver reads it: :func:`webhook_secret`)."""

    @property
    def is_local(self) -> bool:
        return self.env is Environment.LOCAL

    @property
    def state_dir(self) -> Path:
        """Where local state that must outlive a run lives (emulator state, reports)."""
        return self.dagster_home

    @property
    def emulator_state_dir(self) -> Path:
        """Where the in-process emulators keep their videos and inbox."""
        return self.state_dir / "emulators"


def default_dagster_home() -> Path:
    return Path(".alianza").resolve() / "dagster_home"


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def dagster_home_from_env(environ: Mapping[str, str] | None = None) -> Path:
    """``DAGSTER_HOME``, or the default the settings use when it is unset."""
    return Path(_environ(environ).get("DAGSTER_HOME") or default_dagster_home())


def pin_dagster_home() -> Path:
    """Resolve ``DAGSTER_HOME`` and set it, so Dagster's own instance lookup finds the same one."""
    home = dagster_home_from_env().resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def default_emulator_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$DAGSTER_HOME/emulators``, without validating the other settings (``emulate`` needs none)."""
    return dagster_home_from_env(environ) / "emulators"


def log_level_name(environ: Mapping[str, str] | None = None) -> str:
    """``LOG_LEVEL`` as given, lower-cased (the logger maps unknown names to info)."""
    return _environ(environ).get("LOG_LEVEL", "info").strip().lower()


@dataclass(frozen=True)
class MetricsTarget:
    """Where per-run metrics go: read at each push, so a task never fails on a metrics setting."""

    enabled: bool
    env: str
    pushgateway_url: str


def metrics_target(environ: Mapping[str, str] | None = None) -> MetricsTarget:
    env_vars = _environ(environ)
    return MetricsTarget(
        enabled=env_vars.get("METRICS_ENABLED", "").strip().lower() in _TRUE,
        env=env_vars.get("ALIANZA_ENV", "local"),
        pushgateway_url=env_vars.get("PROMETHEUS_PUSHGATEWAY_URL", "").strip(),
    )


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values in the environment (longest first), for redaction to mask; never shown."""
    env = _environ(environ)
    values: list[str] = []
    for name in SECRET_ENV_VARS:
        value = env.get(name, "").strip()
        if len(value) >= MIN_SECRET_LEN:
            values.append(value)
    for name in SECRET_URL_ENV_VARS:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            password = make_url(raw).password
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            match = URL_PASSWORD.search(raw)
            password = match["pw"] if match else None
        if password and len(str(password)) >= MIN_SECRET_LEN:
            values.append(str(password))
    # Longest first, so a secret containing another is masked whole.
    return sorted(set(values), key=len, reverse=True)


def describe_required_secrets(environ: Mapping[str, str] | None = None) -> str:
    """Which secrets the environment needs and whether they are there (names only, never values).

    Raises SettingsError naming what is missing or malformed.
    """
    env_vars = _environ(environ)
    raw_env = env_vars.get("ALIANZA_ENV", "local").strip().lower() or "local"
    if raw_env not in {e.value for e in Environment}:
        raise SettingsError(f"not checked: ALIANZA_ENV={raw_env!r} is not an environment")
    if raw_env == Environment.LOCAL.value:
        emulated = [
            name
            for name, var in (
                ("Stream", "CLOUDFLARE_STREAM_API_TOKEN"),
                ("Resend", "RESEND_API_KEY"),
            )
            if not env_vars.get(var, "").strip()
        ]
        if emulated:
            return f"local: none required ({' and '.join(emulated)} served by the emulator)"
        return "local: none required"
    missing = [n for n in REQUIRED_OUTSIDE_LOCAL if not env_vars.get(n, "").strip()]
    if missing:
        raise SettingsError(f"missing for ALIANZA_ENV={raw_env}: {', '.join(missing)}")
    if not env_vars["RESEND_API_KEY"].strip().startswith("re_"):
        raise SettingsError("RESEND_API_KEY is not a Resend API key (they start with re_)")
    return f"{', '.join(REQUIRED_OUTSIDE_LOCAL)} set (values not shown)"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env_vars = _environ(environ)
    raw_env = env_vars.get("ALIANZA_ENV", "local").strip().lower() or "local"
    try:
        env = Environment(raw_env)
    except ValueError:
        allowed = ", ".join(e.value for e in Environment)
        raise SettingsError(
            f"ALIANZA_ENV={env_vars.get('ALIANZA_ENV')!r} is not one of {allowed}"
        ) from None

    if env is not Environment.LOCAL:
        missing = [name for name in REQUIRED_OUTSIDE_LOCAL if not env_vars.get(name, "").strip()]
        if missing:
            raise SettingsError(
                f"{', '.join(missing)} must be set when ALIANZA_ENV={env.value} (missing)"
            )

    dagster_home = dagster_home_from_env(env_vars)
    raw_db_url = env_vars.get("DATABASE_URL", "").strip()
    if raw_db_url:
        database_url = normalize_database_url(raw_db_url)
    else:
        database_url = normalize_database_url(f"sqlite:///{dagster_home / 'alianza.db'}")

    log_level = env_vars.get("LOG_LEVEL", "info").strip().lower() or "info"
    if log_level == "warn":
        log_level = "warning"
    if log_level not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL={log_level!r} is not one of {', '.join(LOG_LEVELS)}")

    metrics_enabled = _parse_bool(env_vars, "METRICS_ENABLED")
    pushgateway_url = env_vars.get("PROMETHEUS_PUSHGATEWAY_URL", "").strip() or None
    if metrics_enabled and not pushgateway_url:
        raise SettingsError(
            "PROMETHEUS_PUSHGATEWAY_URL must be set when METRICS_ENABLED=true (missing)"
        )
    for name in (
        "CLOUDFLARE_API_BASE_URL",
        "RESEND_API_BASE_URL",
        "PROMETHEUS_PUSHGATEWAY_URL",
        "DAGSTER_WEBSERVER_URL",
        "ALIANZA_WEBHOOKS_URL",
    ):
        _check_http_url(env_vars, name)

    schema_map_path = env_vars.get("ALIANZA_SCHEMA_MAP", "").strip() or None
    db_schema = env_vars.get("ALIANZA_DB_SCHEMA", "").strip() or None
    if db_schema is not None:
        if not DB_SCHEMA_NAME.fullmatch(db_schema):
            raise SettingsError(
                f"ALIANZA_DB_SCHEMA={db_schema!r} is not a plain schema name "
                "(lower-case letters, digits and _, at most 63, not starting with a digit)"
            )
        if not database_url.startswith("postgresql"):
            raise SettingsError("ALIANZA_DB_SCHEMA is for Postgres; DATABASE_URL is not Postgres")

    return Settings(
        env=env,
        dagster_home=dagster_home,
        database_url=database_url,
        stream_emulated=env is Environment.LOCAL
        and not env_vars.get("CLOUDFLARE_STREAM_API_TOKEN", "").strip(),
        resend_emulated=env is Environment.LOCAL and not env_vars.get("RESEND_API_KEY", "").strip(),
        cloudflare_api_base_url=(
            env_vars.get("CLOUDFLARE_API_BASE_URL", "").strip() or DEFAULT_CLOUDFLARE_API_BASE_URL
        ).rstrip("/"),
        resend_api_base_url=(
            env_vars.get("RESEND_API_BASE_URL", "").strip() or DEFAULT_RESEND_API_BASE_URL
        ).rstrip("/"),
        email_from=env_vars.get("EMAIL_FROM", "").strip() or DEFAULT_EMAIL_FROM,
        log_level=log_level,
        metrics_enabled=metrics_enabled,
        pushgateway_url=pushgateway_url,
        alert_email_to=[
            a.strip() for a in env_vars.get("ALERT_EMAIL_TO", "").split(",") if a.strip()
        ],
        webserver_url=(
            env_vars.get("DAGSTER_WEBSERVER_URL", "").strip() or "http://127.0.0.1:3000"
        ).rstrip("/"),
        reports_dir=Path(env_vars.get("REPORTS_DIR", "").strip() or dagster_home / "reports"),
        cron_overrides={
            name.removeprefix(CRON_OVERRIDE_PREFIX).lower(): value.strip()
            for name, value in env_vars.items()
            if name.startswith(CRON_OVERRIDE_PREFIX)
        },
        freshness_overrides=_freshness_overrides(env_vars),
        database_url_from_env=bool(raw_db_url),
        alert_webhook_configured=bool(env_vars.get("ALERT_WEBHOOK_URL", "").strip()),
        dagster_home_from_env=bool(env_vars.get("DAGSTER_HOME", "").strip()),
        schema_map_path=schema_map_path,
        db_schema=db_schema,
        event_triggers=_parse_bool(env_vars, "ALIANZA_EVENT_TRIGGERS")
        if env_vars.get("ALIANZA_EVENT_TRIGGERS", "").strip()
        else True,
        webhooks_url=(
            env_vars.get("ALIANZA_WEBHOOKS_URL", "").strip() or "http://127.0.0.1:8790"
        ).rstrip("/"),
        webhook_secret_configured=bool(env_vars.get(WEBHOOK_SECRET_ENV, "").strip()),
    )


def webhook_secret(environ: Mapping[str, str] | None = None) -> str | None:
    """The Stream webhook secret (CLOUDFLARE_STREAM_WEBHOOK_SECRET), for the receiver only; never
    kept in Settings, so nothing that prints settings can show it."""
    value = _environ(environ).get(WEBHOOK_SECRET_ENV, "").strip()
    return value or None


def normalize_database_url(raw: str, variable: str = "DATABASE_URL") -> str:
    """Turn a plain ``postgresql://`` or ``sqlite:///`` URL into its async-driver form.

    The user gives the URL their other tools use; which asyncio driver we need is our business.
    """
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise SettingsError(
            f"{variable}={mask_url(raw)!r} is not a valid database URL "
            "(expected postgresql://user:password@host:5432/db or sqlite:///path/to/file.db)"
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise SettingsError(
                f"{variable}={mask_url(raw)!r} must name a SQLite file: every run is its own "
                "process, so an in-memory database would be empty in each"
            )
        return url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        if not url.host and not url.query.get("host"):
            raise SettingsError(f"{variable}={mask_url(raw)!r} has no host")
        if not url.database:
            raise SettingsError(f"{variable}={mask_url(raw)!r} names no database")
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise SettingsError(
        f"{variable}={mask_url(raw)!r} uses unsupported backend {backend!r} "
        "(expected postgresql or sqlite)"
    )


# Whatever precedes an "@" after a colon may be a password, even in a string that is not a URL.
_USERINFO = re.compile(r":[^:@\s]*@")


def mask_url(raw: str) -> str:
    """A URL safe to print: its password (if any) replaced by ***."""
    try:
        url: URL = make_url(raw)
    except (ArgumentError, ValueError):
        return _USERINFO.sub(":***@", raw)
    return url.render_as_string(hide_password=True)


def _freshness_overrides(env_vars: Mapping[str, str]) -> dict[str, int]:
    """``ALIANZA_FRESHNESS_<TABLE>_SECONDS`` as {table: seconds}; an empty value is unset."""
    overrides: dict[str, int] = {}
    for name, raw in env_vars.items():
        if not name.startswith(FRESHNESS_OVERRIDE_PREFIX) or not raw.strip():
            continue
        table = name.removeprefix(FRESHNESS_OVERRIDE_PREFIX).removesuffix(FRESHNESS_OVERRIDE_SUFFIX)
        if not name.endswith(FRESHNESS_OVERRIDE_SUFFIX) or not table:
            raise SettingsError(
                f"{name}={raw!r}: expected {FRESHNESS_OVERRIDE_PREFIX}<TABLE>"
                f"{FRESHNESS_OVERRIDE_SUFFIX}=<seconds>"
            )
        value = raw.strip()
        if not (value.isascii() and value.isdigit()) or int(value) < MIN_FRESHNESS_SECONDS:
            raise SettingsError(
                f"{name}={raw!r} is not a whole number of seconds of at least "
                f"{MIN_FRESHNESS_SECONDS} (Dagster's shortest freshness window)"
            )
        overrides[table.lower()] = int(value)
    return overrides


def _parse_bool(env_vars: Mapping[str, str], name: str) -> bool:
    raw = env_vars.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name}={env_vars[name]!r} is not a boolean (use true or false)")


def _check_http_url(env_vars: Mapping[str, str], name: str) -> None:
    raw = env_vars.get(name, "").strip()
    if raw and not re.match(r"^https?://[^/\s]+", raw):
        raise SettingsError(f"{name}={mask_url(raw)!r} is not an http(s) URL")
