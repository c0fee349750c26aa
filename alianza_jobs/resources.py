"""The code location's resources: the database, the Stream and Resend APIs, app config, report files.

Resources are chosen per environment (``ALIANZA_ENV``) in :func:`build_resources` from the
:class:`~alianza_jobs.settings.Settings`, as Dagster's reference projects do. Secrets reach them only
as ``dagster.EnvVar``: Dagster resolves them when a run starts, and the UI shows the variable's name,
never its value. Each API has a real resource and an emulated one (``EmulatedCloudflareStream``,
``EmulatedResendEmail``) served in-process by the project's emulators, chosen in ``local`` when no
token is set, so ``make dev`` works with no network and no accounts.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import dagster as dg
import httpx
from dagster import EnvVar
from pydantic import Field
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from alianza_jobs.clients import resend as resend_api
from alianza_jobs.clients import stream as stream_api
from alianza_jobs.clients.breaker import BreakerStore, CircuitBreaker, MemoryBreakerStore
from alianza_jobs.clients.http import (
    ApiCaller,
    ErrorClassifier,
    HeaderRateLimiter,
    RateLimiter,
    RetrySettings,
    ServiceClient,
    SlidingWindowLimiter,
    Timing,
    build_async_client,
)
from alianza_jobs.clients.resend import ResendClient
from alianza_jobs.clients.stream import StreamClient
from alianza_jobs.db.engine import create_engine, session_factory
from alianza_jobs.db.platform_tables import PlatformTables, platform_tables
from alianza_jobs.db.probe import probe_connection
from alianza_jobs.db.schema_map import SchemaMap, load_schema_map
from alianza_jobs.emulators.constants import (
    EMULATOR_ACCOUNT_ID,
    EMULATOR_API_KEY,
    EMULATOR_STREAM_TOKEN,
    IN_PROCESS_RESEND_BASE_URL,
    IN_PROCESS_STREAM_BASE_URL,
)
from alianza_jobs.settings import Settings

# -- database ----------------------------------------------------------------------------------


class Database(dg.ConfigurableResource):  # type: ignore[type-arg]  # generic in its own resource type
    """The application database (``DATABASE_URL``)."""

    url: str = Field(
        description=(
            "SQLAlchemy URL: postgresql://user:pass@host/db or sqlite:///path/file.db; "
            "the async driver is chosen for you. Pass it with EnvVar so the UI never shows it."
        )
    )
    echo: bool = Field(default=False, description="Log every SQL statement (debugging only).")
    schema_map: str | None = Field(
        default=None,
        description=(
            "ALIANZA_SCHEMA_MAP: a YAML file naming the platform's tables, columns and status "
            "values the jobs use; unset, the local stand-in's names."
        ),
    )
    jobs_schema: str | None = Field(
        default=None,
        description="ALIANZA_DB_SCHEMA: the Postgres schema of the jobs' own tables.",
    )

    @asynccontextmanager
    async def engine(self) -> AsyncIterator[AsyncEngine]:
        """A new engine, disposed (its connections closed) on exit, also when the op is cancelled."""
        engine = create_engine(self.url, echo=self.echo, jobs_schema=self.jobs_schema)
        try:
            yield engine
        finally:
            await engine.dispose()

    def platform_map(self) -> SchemaMap:
        return load_schema_map(self.schema_map)

    async def platform(self, engine: AsyncEngine) -> PlatformTables:
        """The platform's tables, checked against the schema map: a database that does not hold
        what the jobs write fails here, before a run claims anything."""
        schema = "public" if self.jobs_schema else None
        return await platform_tables(engine, self.platform_map(), schema=schema)

    def probe(self) -> AbstractContextManager[tuple[Connection, PlatformTables]]:
        """A synchronous, read-only connection kept by this process, and the platform's tables:
        for the schedules' and sensors' "is there work?" (``alianza_jobs.db.probe``)."""
        return probe_connection(
            self.url, schema_map_path=self.schema_map, jobs_schema=self.jobs_schema
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ``AsyncSession`` on a new engine; commit it yourself (``async with s.begin():``)."""
        async with self.engine() as engine, session_factory(engine)() as session:
            yield session


# -- app config and report files ----------------------------------------------------------------


class AppConfig(dg.ConfigurableResource):  # type: ignore[type-arg]
    email_from: str = Field(
        description="Default sender (EMAIL_FROM) for rows without from_address."
    )
    alert_email_to: list[str] = Field(
        default_factory=list,
        description="Who gets failure alerts and daily reports (ALERT_EMAIL_TO).",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="Slack-compatible incoming webhook for alerts (ALERT_WEBHOOK_URL, via EnvVar).",
    )
    webserver_url: str = Field(
        default="http://127.0.0.1:3000",
        description="Base URL of the Dagster UI, for links in alerts (DAGSTER_WEBSERVER_URL).",
    )

    def run_url(self, run_id: str) -> str:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}"

    def asset_url(self, key: dg.AssetKey) -> str:
        """The asset's page in the UI (its freshness, materializations and lineage)."""
        path = "/".join(quote(part, safe="") for part in key.path)
        return f"{self.webserver_url.rstrip('/')}/assets/{path}"


class ReportStorage(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A directory of report files (REPORTS_DIR; default ``$DAGSTER_HOME/reports``)."""

    directory: str

    async def write_text(self, name: str, content: str) -> Path:
        """Write atomically (temp file + rename): a reader never sees half a report."""
        return await asyncio.to_thread(self._write, name, content)

    async def probe(self) -> None:
        """Write, read back and remove a file: what the health check needs to know."""
        await asyncio.to_thread(self._probe)

    def path(self, name: str) -> Path:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ValueError(f"report name {name!r} must be a plain file name")
        return Path(self.directory) / name

    def _write(self, name: str, content: str) -> Path:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def _probe(self) -> None:
        target = self._write(".health-probe", "ok")
        try:
            if target.read_text(encoding="utf-8") != "ok":
                raise OSError(f"{target} did not read back what was written")
        finally:
            target.unlink(missing_ok=True)


# -- HTTP APIs -----------------------------------------------------------------------------------

C = TypeVar("C", bound=ServiceClient)


class ClientOptions(TypedDict, total=False):
    """How a run opens a service's client: ``stream.client(**options)``."""

    breaker_store: BreakerStore | None
    """Keeps the circuit state between runs (default: this client's own, in memory)."""
    timing: Timing | None
    """Replaces clocks and sleep (tests)."""
    probe: bool
    """One attempt per call and no circuit breaker: the health check's probes."""


class ApiResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    max_attempts: int = 3
    max_retry_wait_s: float = Field(
        default=30.0,
        description=(
            "Longest wait a call sleeps through (Retry-After, or the client-side rate limit); "
            "a longer one fails the call at once with retry_after set."
        ),
    )
    breaker_failure_threshold: int = 5
    breaker_cool_down_s: float = 120.0

    @property
    def api_base_url(self) -> str:
        """Where requests go (the emulated resources answer in-process, whatever base_url says)."""
        raise NotImplementedError

    @property
    def token(self) -> str:
        raise NotImplementedError

    def http_transport(self) -> httpx.AsyncBaseTransport | None:
        """None: the network. The emulated resources serve the API from the emulator instead."""
        return None

    def http_client(self, *, max_connections: int) -> httpx.AsyncClient:
        """A bare client for this API (its base URL, token, timeouts and transport)."""
        return build_async_client(
            base_url=self.api_base_url,
            headers={"authorization": f"Bearer {self.token}"},
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            max_connections=max_connections,
            transport=self.http_transport(),
        )

    @asynccontextmanager
    async def open_client(
        self,
        make: Callable[[ApiCaller, CircuitBreaker], C],
        *,
        service: str,
        classify_error: ErrorClassifier,
        limiter: Callable[[Timing], RateLimiter],
        max_concurrency: int,
        breaker_store: BreakerStore | None = None,
        timing: Timing | None = None,
        probe: bool = False,
    ) -> AsyncIterator[C]:
        """The service's client (``make`` of its caller and breaker), on a pool of its own."""
        timing = timing or Timing()
        breaker = CircuitBreaker(
            service,
            breaker_store or MemoryBreakerStore(),
            threshold=self.breaker_failure_threshold,
            cool_down=self.breaker_cool_down_s,
            clock=timing.now,
        )
        await breaker.load()
        async with self.http_client(max_connections=max_concurrency) as http:
            caller = ApiCaller(
                service=service,
                http=http,
                classify_error=classify_error,
                limiter=limiter(timing),
                retry=RetrySettings(
                    max_attempts=1 if probe else self.max_attempts,
                    max_retry_wait_s=self.max_retry_wait_s,
                ),
                # A health probe asks the service itself: an open circuit must not answer for
                # it, and its failure is the check's to report, not the queue jobs' to count.
                breaker=None if probe else breaker,
                timing=timing,
                max_concurrency=max_concurrency,
                secrets=[self.token],
            )
            yield make(caller, breaker)


def _emulator_transport(state_dir: str) -> httpx.AsyncBaseTransport:
    """Stream and Resend in one ASGI app, in-process, keeping state under ``state_dir``."""
    # Imported on use: the emulators pull in Starlette, which the real APIs never need.
    from alianza_jobs.emulators.app import combined_app

    return httpx.ASGITransport(app=combined_app(Path(state_dir)))


class CloudflareStream(ApiResource):
    """Cloudflare Stream API."""

    account_id: str = Field(description="Cloudflare account id.")
    api_token: str = Field(description="Stream API token (pass as dagster.EnvVar; never logged).")
    base_url: str = stream_api.DEFAULT_BASE_URL
    max_concurrency: int = Field(default=8, description="Bound on in-flight requests per client.")
    rate_limit_requests: int = Field(
        default=1200,
        description=(
            "Requests allowed per window (Cloudflare: 1,200 per 5 minutes per token). Jobs running "
            "at the same time with one token share it: give each a share when they overlap."
        ),
    )
    rate_limit_window_s: float = 300.0
    rate_limit_margin_s: float = Field(
        default=1.0,
        description=(
            "Added to the window when counting: requests reach the server a little later than we "
            "send them, and unevenly; without a margin two sends a window apart can arrive closer."
        ),
    )

    @property
    def api_base_url(self) -> str:
        return self.base_url

    @property
    def token(self) -> str:
        return self.api_token

    def client(self, **options: Unpack[ClientOptions]) -> AbstractAsyncContextManager[StreamClient]:
        """A Stream client with its own connection pool; use one per run."""
        return self.open_client(
            lambda caller, breaker: StreamClient(caller, self.account_id, breaker),
            service=stream_api.SERVICE,
            classify_error=stream_api.classify_error,
            limiter=lambda t: SlidingWindowLimiter(
                self.rate_limit_requests, self.rate_limit_window_s + self.rate_limit_margin_s, t
            ),
            max_concurrency=self.max_concurrency,
            **options,
        )


class EmulatedCloudflareStream(CloudflareStream):
    """Cloudflare Stream served in-process by the project's emulator (``ALIANZA_ENV=local``)."""

    emulator_state_dir: str = Field(description="The emulator's state directory.")
    account_id: str = Field(default=EMULATOR_ACCOUNT_ID, description="Any id; the emulator's own.")
    api_token: str = Field(default=EMULATOR_STREAM_TOKEN, description="Any token works.")

    @property
    def api_base_url(self) -> str:
        return IN_PROCESS_STREAM_BASE_URL

    def http_transport(self) -> httpx.AsyncBaseTransport:
        return _emulator_transport(self.emulator_state_dir)


class ResendEmail(ApiResource):
    """Resend API."""

    api_key: str = Field(description="Resend API key (pass as dagster.EnvVar; never logged).")
    base_url: str = resend_api.DEFAULT_BASE_URL
    max_concurrency: int = Field(
        default=2, description="Bound on in-flight requests (Resend allows a few per second)."
    )

    @property
    def api_base_url(self) -> str:
        return self.base_url

    @property
    def token(self) -> str:
        return self.api_key

    def client(self, **options: Unpack[ClientOptions]) -> AbstractAsyncContextManager[ResendClient]:
        """A Resend client with its own connection pool; use one per run."""
        return self.open_client(
            ResendClient,
            service=resend_api.SERVICE,
            classify_error=resend_api.classify_error,
            limiter=HeaderRateLimiter,
            max_concurrency=self.max_concurrency,
            **options,
        )


class EmulatedResendEmail(ResendEmail):
    """Resend served in-process by the project's emulator (``ALIANZA_ENV=local``)."""

    emulator_state_dir: str = Field(description="The emulator's state directory.")
    api_key: str = Field(default=EMULATOR_API_KEY, description="The emulator's local key.")

    @property
    def api_base_url(self) -> str:
        return IN_PROCESS_RESEND_BASE_URL

    def http_transport(self) -> httpx.AsyncBaseTransport:
        return _emulator_transport(self.emulator_state_dir)


# -- per environment ----------------------------------------------------------------------------


def _database(settings: Settings) -> Database:
    # The URL may carry a password: from the environment as EnvVar, so the UI shows the name only.
    # Read now, so a map that cannot be used fails the code location's load, naming the file and
    # the key, rather than the first run that reaches the database.
    load_schema_map(settings.schema_map_path)
    url = EnvVar("DATABASE_URL") if settings.database_url_from_env else settings.database_url
    return Database(url=url, schema_map=settings.schema_map_path, jobs_schema=settings.db_schema)


def _stream(settings: Settings) -> CloudflareStream:
    if settings.stream_emulated:
        return EmulatedCloudflareStream(emulator_state_dir=str(settings.emulator_state_dir))
    return CloudflareStream(
        account_id=EnvVar("CLOUDFLARE_ACCOUNT_ID"),
        api_token=EnvVar("CLOUDFLARE_STREAM_API_TOKEN"),
        base_url=settings.cloudflare_api_base_url,
    )


def _resend(settings: Settings) -> ResendEmail:
    if settings.resend_emulated:
        return EmulatedResendEmail(emulator_state_dir=str(settings.emulator_state_dir))
    return ResendEmail(api_key=EnvVar("RESEND_API_KEY"), base_url=settings.resend_api_base_url)


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "database": _database(settings),
        "stream": _stream(settings),
        "resend": _resend(settings),
        "app": AppConfig(
            email_from=settings.email_from,
            alert_email_to=settings.alert_email_to,
            # A webhook URL embeds its own credential: EnvVar, so the UI shows the name only.
            alert_webhook_url=EnvVar("ALERT_WEBHOOK_URL")
            if settings.alert_webhook_configured
            else None,
            webserver_url=settings.webserver_url,
        ),
        "reports": ReportStorage(directory=str(settings.reports_dir)),
    }


# One entry per environment. They share a shape today; the dict is where an environment that needs
# a different resource (a read replica, a sandbox API) gets it without touching any task.
RESOURCES_BY_ENV: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "local": _common,
    "dev": _common,
    "uat": _common,
    "prod": _common,
}


def build_resources(settings: Settings) -> dict[str, Any]:
    return RESOURCES_BY_ENV[settings.env.value](settings)
