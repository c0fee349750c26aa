"""What the reliability tests share: emulators on a socket, app databases, runs, and the audits that
count lost and duplicated items.

Runs happen three ways, each where it proves most:

* ``alianza-jobs run`` in a child process (:func:`cli`, :func:`spawn`), as cron and operators run
  it: crash tests SIGKILL that process, concurrency tests start two at once;
* ``job.execute_in_process`` with the real op (:func:`fast_job` shortens only its timeout and
  retry delay), where the test must reach into the run (a timeout, a cut connection);
* the op called directly (:func:`call_op`), for one attempt's outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
from dagster import (
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    JobDefinition,
    OpDefinition,
)
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db import migrate as migrations
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import DeadLetter, EmailDelivery, VideoCheck
from alianza_jobs.db.platform_models import create_stand_in
from alianza_jobs.defs.videos.process_streaming_video_queue import NO_EXTERNAL_ID, NOT_FOUND_REASON
from alianza_jobs.emulators import EmulatorControl, ResendEmulator, StreamEmulator, VideoSpec
from alianza_jobs.platform.task import Retry, TaskSpec
from alianza_jobs.resources import AppConfig, CloudflareStream, Database, ResendEmail
from alianza_jobs.settings import ENV_VARIABLES
from alianza_jobs_tests.db.helpers import DRIZZLE_SCHEMA_MAP, create_drizzle_platform_schema
from alianza_jobs_tests.defs.emails.fixtures import add_emails, deliveries_by_id, merged, rows_by_id
from alianza_jobs_tests.defs.videos.fixtures import (
    CHECK_DEFAULTS,
    insert_streamings,
    streamings_by_id,
    uid_for,
)
from alianza_jobs_tests.e2e.harness import wait_for as e2e_wait_for
from alianza_jobs_tests.processes import free_port
from alianza_jobs_tests.reliability.hooks import (
    AppStatements,
    HttpCounter,
    database_name,
)

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "alianza_jobs.cli"]
CRASHSITE = "alianza_jobs_tests.reliability.crashsite"
ACCOUNT_ID = "a11a2a0000000000000000000000cafe"
STREAM_TOKEN = "cf-reliability-token-0001"
RESEND_KEY = "re_reliability_key_0001"
EMAIL_FROM = "Alianza <jobs@alianza.test>"
KILLED = -9  # a child's returncode when SIGKILL ended it


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- emulators on a loopback socket ------------------------------------------------------------------


# The e2e suite's poll, at a shorter interval: here it watches local state (rows, emulator
# counters, a child process), not a webserver.
wait_for = functools.partial(e2e_wait_for, interval=0.1)


@dataclass
class EmulatorServer:
    """The suite's one emulator process (:mod:`.emulator_server`), one namespace per test."""

    root: Path
    proc: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls, root: Path) -> EmulatorServer:
        port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        with (root / "server.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "alianza_jobs_tests.reliability.emulator_server",
                    "--port",
                    str(port),
                    "--root",
                    str(root),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(root, proc, port)
        try:
            wait_for("the emulator server", lambda: server.healthy("health"), timeout=30)
        except AssertionError:
            server.stop()
            raise
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self, namespace: str) -> bool:
        if self.proc.poll() is not None:
            log = (self.root / "server.log").read_text(errors="replace")
            raise AssertionError(f"the emulator server exited: {log[-2000:]}")
        try:
            response = httpx.get(f"{self.url}/{namespace}/_emulator/health", timeout=2)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def namespace(self, name: str) -> Namespace:
        return Namespace(name=name, state_dir=self.root / name, root_url=f"{self.url}/{name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Namespace:
    """One test's emulated Stream and Resend: their own videos, inbox, faults and counters."""

    name: str
    state_dir: Path
    root_url: str

    @property
    def stream_base_url(self) -> str:
        return f"{self.root_url}/client/v4"

    @property
    def resend_base_url(self) -> str:
        return self.root_url

    @property
    def stream(self) -> StreamEmulator:
        return StreamEmulator(self.state_dir)

    @property
    def resend(self) -> ResendEmulator:
        return ResendEmulator(self.state_dir)

    @property
    def control(self) -> EmulatorControl:
        return EmulatorControl(self.state_dir)


def namespace_for(nodeid: str) -> str:
    return "t" + hashlib.sha256(nodeid.encode()).hexdigest()[:16]


# -- the app's side: databases, resources, environment -------------------------------------------------

# The platform schemas a database may hold: the jobs' local stand-in (BIGINT ids, text statuses
# with every state of ours), or the platform's own as Drizzle makes it (Postgres only: uuid ids,
# enum statuses without `sending` or `dead`, `to` and `error` columns), read through its map.
STAND_IN = "stand-in"
DRIZZLE = "drizzle"
SCHEMAS = (STAND_IN, DRIZZLE)


def schema_map_of(schema: str) -> str | None:
    """The ``ALIANZA_SCHEMA_MAP`` a run on ``schema`` needs (None: the default map)."""
    return str(DRIZZLE_SCHEMA_MAP) if schema == DRIZZLE else None


def schema_env(schema: str) -> dict[str, str]:
    """The variables a child needs to run on ``schema``."""
    path = schema_map_of(schema)
    return {"ALIANZA_SCHEMA_MAP": path} if path else {}


async def migrate(url: str, schema: str = STAND_IN) -> None:
    """The platform's tables (if the database has none yet), then the jobs' at head."""
    if schema == DRIZZLE:
        _create_drizzle_once(url)
    engine = create_engine(url)
    try:
        if schema == STAND_IN:
            await create_stand_in(engine)
        await migrations.upgrade(engine)
    finally:
        await engine.dispose()


def _create_drizzle_once(url: str) -> None:
    # Seeding migrates first, as on the stand-in; the Drizzle statements cannot run twice.
    with psycopg.connect(url) as conn:
        present = conn.execute("SELECT to_regclass('public.email_queue')").fetchone()
    if present is None or present[0] is None:
        create_drizzle_platform_schema(url)


async def with_engine(url: str, action: Callable[[AsyncEngine], Coroutine[Any, Any, T]]) -> T:
    engine = create_engine(url)
    try:
        return await action(engine)
    finally:
        await engine.dispose()


def resources(url: str, ns: Namespace, **overrides: Any) -> dict[str, Any]:
    """The queue ops' resources: the database and both APIs on the namespace's emulator.

    ``stream={...}`` / ``resend={...}`` / ``database={...}`` override resource fields (timeouts,
    attempts, the schema map).
    """
    stream = {"account_id": ACCOUNT_ID, "api_token": STREAM_TOKEN, "base_url": ns.stream_base_url}
    resend = {"api_key": RESEND_KEY, "base_url": ns.resend_base_url}
    return {
        "database": Database(**{"url": url, **overrides.get("database", {})}),
        "stream": CloudflareStream(**{**stream, **overrides.get("stream", {})}),
        "resend": ResendEmail(**{**resend, **overrides.get("resend", {})}),
        "app": AppConfig(**{"email_from": EMAIL_FROM, **overrides.get("app", {})}),
    }


def app_env(url: str, ns: Namespace, **extra: str) -> dict[str, str]:
    """The environment of an ``alianza-jobs`` child pointed at this database and namespace."""
    return {
        "ALIANZA_ENV": "local",
        "DATABASE_URL": url,
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID,
        "CLOUDFLARE_STREAM_API_TOKEN": STREAM_TOKEN,
        "CLOUDFLARE_API_BASE_URL": ns.stream_base_url,
        "RESEND_API_KEY": RESEND_KEY,
        "RESEND_API_BASE_URL": ns.resend_base_url,
        "EMAIL_FROM": EMAIL_FROM,
        **extra,
    }


# Variables a developer's shell may carry that would change what a child sees: a child gets
# exactly the ones a test gives it.
_ISOLATED = ENV_VARIABLES


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in _ISOLATED
        and not k.startswith(("ALIANZA_CRON_", "ALIANZA_FRESHNESS_", "ALIANZA_TEST_"))
    }
    return {**base, **env}


def cli(
    *args: str, env: Mapping[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(*args: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        cwd=REPO,
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_config_file(directory: Path, op: str, config: Mapping[str, Any]) -> Path:
    import yaml

    path = directory / f"{op}-config.yaml"
    path.write_text(yaml.safe_dump({"ops": {op: {"config": dict(config)}}}))
    return path


# -- the real ops under shorter numbers ----------------------------------------------------------------


def task_function(op_def: OpDefinition) -> Callable[..., Any]:
    """The task's own ``async def`` under its op (the TaskSpec wrapper keeps it as __wrapped__)."""
    guarded: Callable[..., Any] = op_def.compute_fn.decorated_fn  # type: ignore[union-attr]
    original: Callable[..., Any] = inspect.unwrap(guarded)
    return original


def fast_job(
    spec: TaskSpec,
    op_def: OpDefinition,
    *,
    timeout: timedelta | None = None,
    retries: int | None = None,
    delay: timedelta = timedelta(seconds=0.2),
) -> JobDefinition:
    """The same task function, timeout enforcement and retry machinery, with a test's timeout
    and a short retry delay (the real ones are minutes and tens of seconds)."""
    retry = spec.retry
    max_retries = retries if retries is not None else (retry.max_retries if retry else 0)
    fast = dataclasses.replace(
        spec,
        timeout=timeout or spec.timeout,
        retry=Retry(max_retries=max_retries, delay=delay) if max_retries else None,
    )
    return fast.job(fast.op(task_function(op_def)))


def run_in_process(
    job: JobDefinition,
    url: str,
    ns: Namespace,
    op: str,
    config: Mapping[str, Any],
    *,
    instance: DagsterInstance | None = None,
    **overrides: Any,
) -> ExecuteInProcessResult:
    """One run of ``job`` in this process (its own event loop), failures returned, not raised."""
    return job.execute_in_process(
        resources=resources(url, ns, **overrides),
        run_config={"ops": {op: {"config": dict(config)}}},
        raise_on_error=False,
        instance=instance,
    )


def retries_of(result: ExecuteInProcessResult) -> int:
    """Op retries the run took (Dagster's STEP_UP_FOR_RETRY events)."""
    return sum(1 for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)


def metadata_of(result: ExecuteInProcessResult, op: str) -> dict[str, Any]:
    """The counters the op reported (its output metadata), by name."""
    for event in result.events_for_node(op):
        if event.event_type == DagsterEventType.STEP_OUTPUT:
            data = event.step_output_data.metadata
            return {key: value.value for key, value in data.items()}
    return {}


def failure_of(result: ExecuteInProcessResult, op: str) -> str:
    """The message of the op's last failure (what an operator reads)."""
    for event in reversed(result.events_for_node(op)):
        if event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            return error.message if error is not None else ""
    return ""


@contextmanager
def counting(url: str) -> Iterator[tuple[AppStatements, HttpCounter]]:
    """Count this process's statements on the database at ``url`` and its API requests."""
    statements = AppStatements(database_name(url))
    http = HttpCounter()
    http.install()
    try:
        yield statements, http
    finally:
        statements.remove()
        http.uninstall()


# -- emails -------------------------------------------------------------------------------------------


def email_row(i: int, tag: str, **overrides: Any) -> dict[str, Any]:
    """A valid platform queue row with its own recipient and subject (a duplicate delivery shows),
    as the platform enqueues one: only its own columns, so it has no delivery until claimed."""
    return {
        "to_address": f"user{i}.{tag}@example.com",
        "from_address": None,
        "subject": f"[{tag}] Order {i} confirmed",
        "html": f"<p>Order {i}</p>",
        "text": f"Order {i}",
        "status": "pending",
        **overrides,
    }


INVALID_EMAILS: dict[str, dict[str, Any]] = {
    "no @": {"to_address": "not-an-address"},
    "CR/LF subject": {"subject": "Hola\r\nBcc: everyone@example.com"},
    "LF in display name": {"to_address": "Ana\nBcc: x@example.com <ana@example.com>"},
    "no body": {"html": None, "text": None},
    "bad sender": {"from_address": "nobody"},
}


@dataclass
class EmailQueueSeed:
    valid: list[str]
    invalid: list[str]
    schema: str = STAND_IN

    @property
    def items(self) -> int:
        return len(self.valid) + len(self.invalid)


async def seed_emails(
    url: str, tag: str, valid: int, invalid: int = 0, *, schema: str = STAND_IN
) -> EmailQueueSeed:
    """``valid`` good rows and ``invalid`` rule-breaking ones interleaved, migrated first."""
    await migrate(url, schema)
    rows, kinds = [], []
    bad = list(INVALID_EMAILS.values())
    step = max(1, valid // max(invalid, 1))
    made_bad = 0
    for i in range(valid):
        rows.append(email_row(i, tag))
        kinds.append("valid")
        if made_bad < invalid and i % step == step - 1:
            rows.append(email_row(10_000 + made_bad, tag, **bad[made_bad % len(bad)]))
            kinds.append("invalid")
            made_bad += 1
    while made_bad < invalid:
        rows.append(email_row(10_000 + made_bad, tag, **bad[made_bad % len(bad)]))
        kinds.append("invalid")
        made_bad += 1

    async def insert(engine: AsyncEngine) -> list[str]:
        if schema == DRIZZLE:
            return await add_drizzle_emails(engine, rows)
        return await add_emails(engine, rows)

    ids = await with_engine(url, insert)
    return EmailQueueSeed(
        valid=[i for i, k in zip(ids, kinds, strict=True) if k == "valid"],
        invalid=[i for i, k in zip(ids, kinds, strict=True) if k == "invalid"],
        schema=schema,
    )


# The Drizzle tables are written and read in SQL of the platform's own names, so what an audit
# checks is what the platform sees, not the jobs' reflection of it.
INSERT_DRIZZLE_EMAIL = text(
    'INSERT INTO email_queue ("to", "from", subject, html, text, status) '
    "VALUES (:to_address, :from_address, :subject, :html, :text, 'pending') RETURNING id::text"
)
READ_DRIZZLE_EMAILS = text(
    'SELECT id::text AS id, "to" AS to_address, subject, status::text AS status, sent_at, '
    "error AS last_error FROM email_queue ORDER BY id"
)
INSERT_DRIZZLE_STREAMING = text(
    "INSERT INTO streamings (external_id, provider, status) "
    "VALUES (:external_id, 'cloudflare', 'queued') RETURNING id::text"
)
READ_DRIZZLE_STREAMINGS = text(
    "SELECT id::text AS id, external_id, provider::text AS provider, status::text AS status, "
    "duration AS platform_duration, created_at, updated_at, deleted_at FROM streamings ORDER BY id"
)
# What the platform's status holds for each end state of ours: the Drizzle enum has no `dead`,
# its map says `failed` (alianza_jobs_tests/db/drizzle/schema-map.yaml).
PLATFORM_STATUS = {
    STAND_IN: {"sent": "sent", "dead": "dead"},
    DRIZZLE: {"sent": "sent", "dead": "failed"},
}


async def add_drizzle_emails(engine: AsyncEngine, rows: list[dict[str, Any]]) -> list[str]:
    content = ("to_address", "from_address", "subject", "html", "text")
    async with engine.begin() as conn:
        return [
            str(await conn.scalar(INSERT_DRIZZLE_EMAIL, {k: row[k] for k in content}))
            for row in rows
        ]


@dataclass
class Audit:
    """What a fault cost: items not in their one correct state, and duplicates."""

    items: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not self.lost and not self.duplicated

    def explain(self) -> str:
        return f"lost: {self.lost[:10]} duplicated: {self.duplicated[:10]}"


async def email_rows(url: str, schema: str = STAND_IN) -> dict[str, dict[str, Any]]:
    """Every platform row merged with its delivery (the email fixtures' :class:`Row`, as a dict),
    by id: our state and bookkeeping, and the platform row's own ``platform_status``."""

    async def read(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
        if schema == STAND_IN:
            rows = await rows_by_id(engine)
        else:
            async with engine.connect() as conn:
                platform = [dict(r._mapping) for r in await conn.execute(READ_DRIZZLE_EMAILS)]
            deliveries = await deliveries_by_id(engine)
            rows = {p["id"]: merged(p, deliveries.get(p["id"])) for p in platform}
        return {row_id: dataclasses.asdict(row) for row_id, row in rows.items()}

    return await with_engine(url, read)


async def dead_letter_counts(url: str, source: str) -> Counter[str]:
    """Dead letters per item, by the platform row's id as text (``dead_letters.source_id``)."""

    async def read(engine: AsyncEngine) -> Counter[str]:
        async with engine.connect() as conn:
            result = await conn.execute(
                select(DeadLetter.source_id, func.count())
                .where(DeadLetter.source == source)
                .group_by(DeadLetter.source_id)
            )
            return Counter({str(source_id): int(n) for source_id, n in result})

    return await with_engine(url, read)


async def audit_emails(url: str, resend: ResendEmulator, seed: EmailQueueSeed) -> Audit:
    """Every valid row ``sent`` and its email in the inbox exactly once (under the key on the row,
    with the id on the row); every invalid row ``dead`` with one dead letter; nothing leased. The
    platform's row must say so too, in its own status values (``failed`` for dead on Drizzle)."""
    rows = await email_rows(url, seed.schema)
    letters = await dead_letter_counts(url, "email_queue")
    platform_status = PLATFORM_STATUS[seed.schema]
    inbox = resend.inbox()
    by_id = {e.id: e for e in inbox}
    audit = Audit(items=seed.items)
    for row_id in seed.valid:
        row = rows[row_id]
        delivered = by_id.get(row["provider_message_id"] or "")
        if row["status"] != "sent" or delivered is None:
            audit.lost.append(f"{row_id}:{row['status']}:{row['last_error']}")
        elif (
            delivered.subject != row["subject"]
            or delivered.idempotency_key != (row["idempotency_key"])
        ):
            audit.lost.append(f"{row_id}: sent as another email")
        elif row["platform_status"] != platform_status["sent"]:
            audit.lost.append(f"{row_id}: sent, but {row['platform_status']} on the platform")
    for row_id in seed.invalid:
        row = rows[row_id]
        if (
            row["status"] != "dead"
            or row["platform_status"] != platform_status["dead"]
            or letters[row_id] == 0
        ):
            audit.lost.append(
                f"{row_id}:{row['status']}/{row['platform_status']} (invalid, expected dead)"
            )
    for row_id, row in rows.items():
        if row["locked_by"] is not None or row["status"] == "sending":
            audit.lost.append(f"{row_id}: stuck {row['status']} locked_by={row['locked_by']}")
    for fingerprint, count in resend.counts_by_message().items():
        if count > 1:
            audit.duplicated += [f"message {fingerprint} delivered {count} times"] * (count - 1)
    for row_id, count in letters.items():
        if count > 1:
            audit.duplicated += [f"row {row_id} dead-lettered {count} times"] * (count - 1)
    # Every email delivered under a key is a row sent under it (this seed's or any other row).
    sent_keys = Counter(r["idempotency_key"] for r in rows.values() if r["status"] == "sent")
    if resend.counts_by_idempotency_key() != dict(sent_keys):
        audit.duplicated.append(
            f"deliveries per key {resend.counts_by_idempotency_key()} != rows per key {sent_keys}"
        )
    return audit


# -- videos -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    status: str
    duration: float | None = None
    reason: str | None = None
    checked: bool = True


@dataclass
class VideoQueueSeed:
    ids: list[Any]  # the platform's ids: int on the stand-in, uuid text on Drizzle
    expected: dict[Any, Expected]
    schema: str = STAND_IN

    @property
    def items(self) -> int:
        return len(self.ids)


async def seed_videos(
    url: str,
    stream: StreamEmulator,
    tag: str,
    *,
    ready: int = 10,
    errored: int = 4,
    processing: int = 4,
    deleted: int = 3,
    no_external_id: int = 2,
    duplicate_uids: int = 2,
    schema: str = STAND_IN,
) -> VideoQueueSeed:
    """Queued rows and their videos in the emulator, each with the one state it must end in.

    Every timeline is already final (or far from it), so the expected state does not depend on
    when the run happens: ready (with its duration), errored (with Stream's reason), still
    processing (stays queued, but checked), deleted in Stream (error: not found), rows without an
    uid (error at once), and uids shared by two rows (both settled alike).
    """
    await migrate(url, schema)
    created = datetime.now(UTC) - timedelta(minutes=10)
    specs: list[VideoSpec] = []
    rows: list[dict[str, Any]] = []
    expected: list[Expected] = []

    def at() -> datetime:
        # Uploads a second apart, as real ones are: the listing pages by creation time.
        return created + timedelta(seconds=len(specs))

    for i in range(ready):
        uid = uid_for(f"{tag}-ready-{i}")
        duration = 30.0 + i
        specs.append(
            VideoSpec(uid=uid, created=at(), final_after_s=0, outcome="ready", duration=duration)
        )
        rows.append({"external_id": uid})
        expected.append(Expected("ready", duration=duration))
    for i in range(errored):
        uid = uid_for(f"{tag}-error-{i}")
        specs.append(
            VideoSpec(
                uid=uid,
                created=at(),
                final_after_s=0,
                outcome="error",
                error_reason_code="ERR_NON_VIDEO",
                error_reason_text="The file was not recognized as a valid video file.",
                legacy_error_spelling=i % 2 == 1,
            )
        )
        rows.append({"external_id": uid})
        expected.append(Expected("error", reason="ERR_NON_VIDEO"))
    for i in range(processing):
        uid = uid_for(f"{tag}-processing-{i}")
        specs.append(VideoSpec(uid=uid, created=at(), final_after_s=36_000, outcome="ready"))
        rows.append({"external_id": uid})
        expected.append(Expected("queued"))
    gone = [uid_for(f"{tag}-deleted-{i}") for i in range(deleted)]
    for uid in gone:
        specs.append(VideoSpec(uid=uid, created=at(), final_after_s=0))
    for uid in gone:
        rows.append({"external_id": uid})
        expected.append(Expected("error", reason=NOT_FOUND_REASON))
    for _ in range(no_external_id):
        rows.append({"external_id": None})
        expected.append(Expected("error", reason=NO_EXTERNAL_ID, checked=False))
    for i in range(duplicate_uids):
        rows.append({"external_id": rows[i]["external_id"]})
        expected.append(expected[i])
    stream.add_videos(specs)
    for uid in gone:
        stream.delete(uid)

    async def insert(engine: AsyncEngine) -> list[Any]:
        if schema == DRIZZLE:
            async with engine.begin() as conn:
                return [str(await conn.scalar(INSERT_DRIZZLE_STREAMING, row)) for row in rows]
        return await insert_streamings(engine, rows)

    ids = await with_engine(url, insert)
    return VideoQueueSeed(ids=ids, expected=dict(zip(ids, expected, strict=True)), schema=schema)


async def streaming_rows(url: str, schema: str = STAND_IN) -> dict[Any, dict[str, Any]]:
    """Every platform row merged with its check's bookkeeping (the video fixtures' reader on the
    stand-in), by the platform's id. On Drizzle ``duration`` is the text column read as a number
    (``platform_duration`` the text itself)."""

    async def read(engine: AsyncEngine) -> dict[Any, dict[str, Any]]:
        if schema == STAND_IN:
            return {i: dict(row) for i, row in (await streamings_by_id(engine)).items()}
        async with engine.connect() as conn:
            platform = [dict(r._mapping) for r in await conn.execute(READ_DRIZZLE_STREAMINGS)]
            checks = {
                row.streaming_id: dict(row._mapping)
                for row in await conn.execute(select(VideoCheck.__table__))
            }
        rows = {}
        for row in platform:
            check = checks.get(row["id"], {})
            text_duration = row["platform_duration"]
            rows[row["id"]] = {
                **row,
                "duration": float(text_duration) if text_duration is not None else None,
                **{k: check.get(k, v) for k, v in CHECK_DEFAULTS.items()},
            }
        return rows

    return await with_engine(url, read)


async def audit_queue(
    url: str, emulators: Namespace, seed: EmailQueueSeed | VideoQueueSeed
) -> Audit:
    """The audit of whichever queue ``seed`` filled (the email one also reads the inbox)."""
    if isinstance(seed, EmailQueueSeed):
        return await audit_emails(url, emulators.resend, seed)
    return await audit_videos(url, seed)


async def audit_videos(url: str, seed: VideoQueueSeed) -> Audit:
    rows = await streaming_rows(url, seed.schema)
    letters = await dead_letter_counts(url, "streamings")
    audit = Audit(items=seed.items)
    for row_id, want in seed.expected.items():
        row = rows[row_id]
        problems = []
        if row["status"] != want.status:
            problems.append(f"status {row['status']} != {want.status}")
        if want.duration is not None and row["duration"] != want.duration:
            problems.append(f"duration {row['duration']} != {want.duration}")
        if want.reason is not None and want.reason not in (row["error_reason"] or ""):
            problems.append(f"reason {row['error_reason']!r} lacks {want.reason!r}")
        if want.checked and row["checked_at"] is None:
            problems.append("never checked")
        if row["locked_by"] is not None:
            problems.append(f"still leased by {row['locked_by']}")
        if problems:
            audit.lost.append(f"{row_id}: {'; '.join(problems)}")
    for row_id, count in letters.items():
        if count > 1:
            audit.duplicated += [f"row {row_id} dead-lettered {count} times"] * (count - 1)
    return audit


# -- waiting ------------------------------------------------------------------------------------------


Bookkeeping = type[EmailDelivery] | type[VideoCheck]


async def leases_passed(url: str, table: Bookkeeping) -> bool:
    """True once no row holds a lease that is still running (a crashed run's rows are free).
    The leases are the jobs' own, on their bookkeeping rows (``email_deliveries``,
    ``video_checks``)."""

    async def check(engine: AsyncEngine) -> bool:
        async with engine.connect() as conn:
            held = await conn.scalar(
                select(func.count())
                .select_from(table)
                .where(table.locked_until > datetime.now(UTC))
            )
        return int(held or 0) == 0

    return await with_engine(url, check)


def wait_for_leases(url: str, table: Bookkeeping, timeout: float) -> None:
    wait_for(
        f"the leases in {table.__tablename__} to pass",
        lambda: run_async(leases_passed(url, table)),
        timeout=timeout,
    )


@contextmanager
def held_until_met_in_flight(ns: Namespace) -> Iterator[None]:
    """Resend holds its first request in flight (the emulator's ``hold_requests``) until a request
    with the same key has met it there (a 409 ``concurrent_idempotent_requests`` served), then lets
    it finish: the retry meets the first send in flight, and then its answer, however long the
    machine takes to get the retry there."""
    ns.control.update_config({"resend": {"hold_requests": [1]}})
    done = threading.Event()

    def release() -> None:
        try:
            while not done.wait(0.05):  # polling the counters for the 409, until the block ends
                if any(c.service == "resend" and c.status == 409 for c in ns.control.counters()):
                    break
        finally:
            ns.control.update_config({"resend": {"hold_requests": []}})

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        yield
    finally:
        done.set()
        releaser.join(timeout=30)


def elapsed_since(started: float) -> float:
    return round(time.monotonic() - started, 1)


__all__ = [
    "ACCOUNT_ID",
    "CRASHSITE",
    "DRIZZLE",
    "EMAIL_FROM",
    "KILLED",
    "RESEND_KEY",
    "SCHEMAS",
    "STAND_IN",
    "STREAM_TOKEN",
    "Audit",
    "EmailQueueSeed",
    "EmulatorServer",
    "Expected",
    "Namespace",
    "VideoQueueSeed",
    "app_env",
    "audit_emails",
    "audit_videos",
    "cli",
    "email_row",
    "fast_job",
    "held_until_met_in_flight",
    "resources",
    "schema_env",
    "schema_map_of",
    "seed_emails",
    "seed_videos",
    "spawn",
    "wait_for_leases",
]
