"""The machinery every workload shares: emulators on a socket, fresh databases, measured children.

* :class:`EmulatorServer`: ``alianza-jobs emulate`` in its own process on a free loopback port, so
  requests cross a real socket (connection handling, serialisation, the server's own CPU) instead
  of an in-process ASGI call. The benchmark steers it through the state directory it shares
  (``StreamEmulator``/``ResendEmulator``), as the emulator's README describes.
* :class:`Databases`: a migrated, populated *template* per workload and size, and a fresh copy of
  it for every measured run (SQLite: a file copy; Postgres: ``CREATE DATABASE ... TEMPLATE``), so
  the baseline and our job see byte-identical data. Everything created is dropped on exit.
* :class:`PlatformSchema`: which platform tables a template gets before the jobs' migrations (the
  local stand-in, or the schema the platform's Drizzle ORM makes) and the schema map the jobs and
  the baseline read them through.
* :func:`run_process`: one measured run in a child process. Its CPU time comes from ``os.wait4``
  (the kernel's accounting of that child alone), its peak RSS and the job's own wall time from the
  child's report (``VmHWM`` of its own address space, see ``benchmarks.child``). Around it we measure how much CPU *other* processes used: the machine is shared
  (2 cores), and a run that had to share them is flagged and repeated (see :class:`Quiet`).
* :class:`TreeCpu`, :func:`stop_process_groups`, :func:`free_port`, :func:`wait_for`: for the
  trigger workloads, whose subject is a whole long-running deployment (a process tree) rather
  than one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg import sql
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db import migrate
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.platform_models import create_stand_in, platform_metadata
from alianza_jobs.db.platform_tables import PlatformTables, platform_tables
from alianza_jobs.db.schema_map import SchemaMap, load_schema_map
from alianza_jobs.settings import ENV_VARIABLES
from alianza_jobs_tests.db.helpers import DRIZZLE_SCHEMA_MAP, create_drizzle_platform_schema

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "ALIANZA_BENCH_POSTGRES_URL",
    os.environ.get("ALIANZA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
# Names every database we create starts with, plus our pid, so a concurrent benchmark (the CI
# smoke test beside a full run) never touches ours, nor we theirs.
PG_PREFIX = "alianza_bench"
MB = 1024 * 1024

# Variables of the developer's shell that would change what a child sees; the harness sets its own.
_SCRUBBED_ENV = (*ENV_VARIABLES, "DAGSTER_HOME")


# -- statistics ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(ours: float | None, baseline: float | None) -> float | None:
    if ours is None or baseline is None or baseline == 0:
        return None
    return ours / baseline


# -- the machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def postgres_version(admin_url: str = PG_ADMIN_URL) -> str | None:
    try:
        with psycopg.connect(admin_url, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.OperationalError:
        return None
    return str(row[0]) if row else None


def machine_info() -> dict[str, Any]:
    import dagster
    import sqlalchemy

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "dagster": dagster.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "httpx": httpx.__version__,
        "postgres": postgres_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# -- CPU accounting: who else is using the machine -----------------------------------------------


def _busy_cpu_s() -> float:
    """Seconds of CPU the whole machine has spent busy since boot."""
    t = psutil.cpu_times()
    # guest time is already counted in user time on Linux.
    unbusy = ("idle", "iowait", "guest", "guest_nice")
    return float(sum(t)) - sum(float(getattr(t, name, 0.0)) for name in unbusy)


def _process_cpu_s(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds of every Postgres server process (our run's queries are served there)."""
    out: dict[int, float] = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") != "postgres":
            continue
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = float(t.user + t.system)
    return out


@dataclass
class CpuWindow:
    """CPU used by processes that are not part of the measurement, over a window of time."""

    helper_pids: Sequence[int] = ()
    started: float = 0.0
    busy0: float = 0.0
    helpers0: float = 0.0
    own0: float = 0.0
    pg0: dict[int, float] = field(default_factory=dict)

    def start(self) -> CpuWindow:
        self.started = time.perf_counter()
        self.busy0 = _busy_cpu_s()
        self.helpers0 = sum(_process_cpu_s(pid) for pid in self.helper_pids)
        self.own0 = _process_cpu_s(os.getpid())
        self.pg0 = _postgres_cpu()
        return self

    def foreign_cores(self, child_cpu_s: float = 0.0) -> float:
        """Average number of cores other processes kept busy since :meth:`start`.

        Ours: this process, the helpers (the emulator), the measured child, and the Postgres
        server's work (approximate: a backend that exited during the window is not seen).
        """
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        busy = _busy_cpu_s() - self.busy0
        helpers = sum(_process_cpu_s(pid) for pid in self.helper_pids) - self.helpers0
        own = _process_cpu_s(os.getpid()) - self.own0
        pg1 = _postgres_cpu()
        pg = sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in pg1.items())
        return round(max(0.0, busy - helpers - own - child_cpu_s - pg) / elapsed, 2)


@dataclass
class Quiet:
    """When the machine is quiet enough to measure: other processes using under ``max_foreign``
    cores over a ``sample_s`` sample. Waits up to ``timeout_s`` (0: never wait) before each run;
    a run whose neighbours used more than ``max_foreign_during`` cores is repeated, up to
    ``max_attempts`` times, keeping the least disturbed attempt."""

    max_foreign: float = 0.4
    max_foreign_during: float = 0.6
    sample_s: float = 3.0
    timeout_s: float = 0.0
    max_attempts: int = 1

    def wait(self, helper_pids: Sequence[int], log: Callable[[str], None]) -> dict[str, Any]:
        if self.timeout_s <= 0:
            return {"waited_s": 0.0, "quiet": None}
        deadline = time.monotonic() + self.timeout_s
        started = time.monotonic()
        while True:
            window = CpuWindow(helper_pids).start()
            time.sleep(self.sample_s)
            foreign = window.foreign_cores()
            if foreign <= self.max_foreign:
                return {"waited_s": round(time.monotonic() - started, 1), "quiet": True}
            if time.monotonic() >= deadline:
                log(f"  machine still busy ({foreign} cores used by others); measuring anyway")
                return {"waited_s": round(time.monotonic() - started, 1), "quiet": False}
            log(f"  waiting for a quiet machine ({foreign} cores used by others, load {load1()})")


# -- child processes -------------------------------------------------------------------------------


@dataclass
class ChildOutcome:
    returncode: int
    timed_out: bool
    process_s: float
    """Wall time of the whole child process (interpreter start-up and imports included)."""
    peak_rss_mb: float
    cpu_s: float
    foreign_cores: float
    load1_start: float
    load1_end: float
    stdout: str
    report: dict[str, Any]
    """What a ``benchmarks.child`` wrote to its result file (empty for other commands)."""


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env = {
        k: v for k, v in env.items() if not k.startswith(("ALIANZA_CRON_", "ALIANZA_FRESHNESS_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def child_command(
    impl: str, target: str, *, run_config: Mapping[str, Any] | None = None
) -> list[str]:
    """``python -m benchmarks.child IMPL TARGET``; :func:`run_process` adds ``--result``."""
    cmd = [sys.executable, "-m", "benchmarks.child", impl, target]
    if run_config:
        cmd += ["--run-config", json.dumps(run_config)]
    return cmd


def run_process(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    log_path: Path,
    helper_pids: Sequence[int] = (),
) -> ChildOutcome:
    """Run ``cmd`` (stderr to ``log_path``) and account for it; a ``benchmarks.child`` command gets
    a ``--result`` file whose JSON becomes ``report``."""
    cmd = list(cmd)
    result_path: Path | None = None
    if cmd[1:3] == ["-m", "benchmarks.child"]:
        result_path = log_path.with_name(f"{log_path.stem}.{secrets.token_hex(3)}.result.json")
        cmd += ["--result", str(result_path)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    window = CpuWindow(helper_pids).start()
    load_start = load1()
    started = time.perf_counter()
    with log_path.open("ab") as log, tempfile.TemporaryFile() as out:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, env=dict(env), cwd=REPO, stdout=out, stderr=log)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            # wait4 rather than Popen.wait: it returns the kernel's resource usage of this child
            # alone (CPU), which RUSAGE_CHILDREN would mix with every earlier child's.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        process_s = time.perf_counter() - started
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    cpu_s = usage.ru_utime + usage.ru_stime
    report: dict[str, Any] = {}
    if result_path is not None and result_path.exists():
        report = json.loads(result_path.read_text())
        result_path.unlink()
    return ChildOutcome(
        returncode=proc.returncode,
        timed_out=timed_out.is_set(),
        process_s=round(process_s, 3),
        # The child's own account when it gives one (see benchmarks.child._peak_rss_mb: wait4's
        # ru_maxrss can carry the parent's high-water mark over the exec); else wait4's, in KiB.
        peak_rss_mb=float(report.get("peak_rss_mb") or round(usage.ru_maxrss / 1024, 1)),
        cpu_s=round(cpu_s, 2),
        foreign_cores=window.foreign_cores(cpu_s),
        load1_start=load_start,
        load1_end=load1(),
        stdout=stdout,
        report=report,
    )


# -- the emulators, on a socket -------------------------------------------------------------------


_BANNER = re.compile(r"Alianza emulators on (http://\S+)")


@dataclass
class EmulatorServer:
    state_dir: Path
    root: str
    pid: int

    @property
    def stream_base_url(self) -> str:
        return f"{self.root}/client/v4"

    @property
    def resend_base_url(self) -> str:
        return self.root


@contextlib.contextmanager
def emulator_server(
    state_dir: Path,
    *,
    log_path: Path,
    latency_ms: float,
    stream_rate_limit: int | None = None,
    stream_rate_window_s: float | None = None,
    resend_rate_limit: int | None = None,
    startup_timeout_s: float = 60.0,
) -> Iterator[EmulatorServer]:
    """``alianza-jobs emulate --port 0`` in a child process; stopped (by its pid) on exit."""
    cmd = [
        sys.executable,
        "-m",
        "alianza_jobs.cli",
        "emulate",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--state-dir",
        str(state_dir),
        "--latency-ms",
        f"{latency_ms:g}",
        "--log-level",
        "warning",
    ]
    if stream_rate_limit is not None:
        cmd += ["--stream-rate-limit", str(stream_rate_limit)]
    if stream_rate_window_s is not None:
        cmd += ["--stream-rate-window", f"{stream_rate_window_s:g}"]
    if resend_rate_limit is not None:
        cmd += ["--resend-rate-limit", str(resend_rate_limit)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=child_env({}), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        root = _wait_for_banner(proc, log_path, startup_timeout_s)
        _wait_for_health(root, proc, startup_timeout_s)
        yield EmulatorServer(state_dir=state_dir, root=root, pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _wait_for_banner(proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _BANNER.search(log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"the emulator exited with {proc.returncode}; see {log_path}")
        time.sleep(0.05)
    raise TimeoutError(f"the emulator did not start within {timeout_s} s; see {log_path}")


def _wait_for_health(root: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{root}/_emulator/health").status_code == 200:
                    return
            if proc.poll() is not None:
                raise RuntimeError(f"the emulator exited with {proc.returncode}")
            time.sleep(0.05)
    raise TimeoutError(f"the emulator at {root} never answered its health route")


# -- platform schemas ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlatformSchema:
    """The platform's tables a database starts with, and the map they are read through.

    ``default``: the local stand-in (``alianza_jobs.db.platform_models``), the default map.
    ``drizzle``: the tables the platform's Drizzle ORM creates (uuid ids, enum statuses, text
    durations, an email queue with ``to``/``from``/``error``), the tests' map for them; Postgres
    only, as the platform is.
    """

    name: str
    description: str
    schema_map_path: str | None
    """``ALIANZA_SCHEMA_MAP`` for the runs on it (None: the default map)."""
    backends: tuple[str, ...]

    def schema_map(self) -> SchemaMap:
        return load_schema_map(self.schema_map_path)

    async def tables(self, engine: AsyncEngine) -> PlatformTables:
        """The platform tables on ``engine``, reflected and keyed by the jobs' names."""
        return await platform_tables(engine, self.schema_map())

    def insert_into(self, tables: PlatformTables, key: str) -> Table:
        """Where a workload inserts the rows of platform table ``key`` (keyed by the jobs' names).

        The stand-in's own declared table on the default schema: its reflection cannot take an
        INSERT on Postgres (the BIGINT id, reflected as ``PlatformKey`` with autoincrement=True,
        raises ``ArgumentError``). The stand-in's columns are named as the jobs name them, so the
        same rows fit both.
        """
        if self.name == "default":
            return platform_metadata.tables[key]
        return getattr(tables, key)  # type: ignore[no-any-return]

    async def create(self, engine: AsyncEngine, url: str) -> None:
        if self.name == "drizzle":
            create_drizzle_platform_schema(url)
        else:
            await create_stand_in(engine)


DEFAULT_SCHEMA = PlatformSchema(
    "default", "the local stand-in (default schema map)", None, ("sqlite", "postgres")
)
DRIZZLE_SCHEMA = PlatformSchema(
    "drizzle",
    "the Drizzle-made platform schema (alianza_jobs_tests/db/drizzle)",
    str(DRIZZLE_SCHEMA_MAP),
    ("postgres",),
)
PLATFORM_SCHEMAS = {s.name: s for s in (DEFAULT_SCHEMA, DRIZZLE_SCHEMA)}


# -- databases -------------------------------------------------------------------------------------

Populate = Callable[[AsyncEngine], Awaitable[Any]]


async def _populate(url: str, populate: Populate, schema: PlatformSchema) -> Any:
    engine = create_engine(url)
    try:
        await schema.create(engine, url)
        await migrate.upgrade(engine)
        result = await populate(engine)
        if engine.dialect.name == "postgresql":
            # What autovacuum would do to tables that just got their rows (the planner needs
            # statistics), done now so that autovacuum has no reason to connect to the template
            # while it is being copied.
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
            async with autocommit.connect() as conn:
                await conn.exec_driver_sql("VACUUM ANALYZE")
        return result
    finally:
        await engine.dispose()


class Databases(ABC):
    """Templates and per-run copies on one backend; ``close()`` removes every one of them."""

    backend: str

    @abstractmethod
    def template(
        self, key: str, populate: Populate, schema: PlatformSchema = DEFAULT_SCHEMA
    ) -> Any:
        """Create the template ``key`` (``schema``'s platform tables, the jobs' migrations, then
        ``populate``d); returns what populate did."""

    @abstractmethod
    def copy(self, key: str) -> contextlib.AbstractContextManager[str]:
        """A fresh database holding exactly the template's data, for one run; dropped after."""

    @contextlib.contextmanager
    def empty(self) -> Iterator[str]:
        """A fresh database at the migrations' head, with no rows."""

        async def nothing(_: AsyncEngine) -> None:
            return None

        key = f"empty_{secrets.token_hex(3)}"
        self.template(key, nothing)
        with self.copy(key) as url:
            yield url

    @abstractmethod
    def close(self) -> None: ...


class SqliteDatabases(Databases):
    backend = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def _template_path(self, key: str) -> Path:
        return self.directory / f"{key}.template.db"

    def template(
        self, key: str, populate: Populate, schema: PlatformSchema = DEFAULT_SCHEMA
    ) -> Any:
        if self.backend not in schema.backends:
            raise ValueError(f"the {schema.name} platform schema is not made on {self.backend}")
        path = self._template_path(key)
        _remove_sqlite(path)
        result = asyncio.run(_populate(f"sqlite:///{path}", populate, schema))
        # Fold the WAL into the main file, so copying that one file copies every row.
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return result

    @contextlib.contextmanager
    def copy(self, key: str) -> Iterator[str]:
        target = self.directory / f"{key}.{secrets.token_hex(4)}.db"
        shutil.copyfile(self._template_path(key), target)
        try:
            yield f"sqlite:///{target}"
        finally:
            _remove_sqlite(target)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class PostgresDatabases(Databases):
    backend = "postgres"

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []
        self.templates: dict[str, str] = {}
        info = psycopg.conninfo.conninfo_to_dict(admin_url)
        self._user = info.get("user") or "postgres"
        self._host = info.get("host") or "127.0.0.1"
        self._port = info.get("port") or 5432
        self._tag = f"{PG_PREFIX}_{os.getpid()}_{secrets.token_hex(2)}"

    @staticmethod
    def available(admin_url: str = PG_ADMIN_URL) -> str | None:
        """None when the server answers, else why not."""
        try:
            with psycopg.connect(admin_url, connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            return str(exc).splitlines()[0]
        return None

    def _url(self, name: str) -> str:
        return f"postgresql://{self._user}@{self._host}:{self._port}/{name}"

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def template(
        self, key: str, populate: Populate, schema: PlatformSchema = DEFAULT_SCHEMA
    ) -> Any:
        name = f"{self._tag}_{key}"[:63]
        if name in self.templates.values():
            self._drop(name)
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        self.templates[key] = name
        return asyncio.run(_populate(self._url(name), populate, schema))

    @contextlib.contextmanager
    def copy(self, key: str) -> Iterator[str]:
        template = self.templates[key]
        name = f"{self._tag}_r{secrets.token_hex(4)}"
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self._admin(create)
                break
            except psycopg.errors.ObjectInUse:
                # Someone (autovacuum) is connected to the template: copying needs it alone.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.created.append(name)
        try:
            yield self._url(name)
        finally:
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            with contextlib.suppress(psycopg.Error):
                self._drop(name)


# -- a scratch directory ---------------------------------------------------------------------------


def scratch_dir(prefix: str = "alianza-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def dagster_home(directory: Path) -> Path:
    """A DAGSTER_HOME with the repository's dagster.yaml: runs are stored as in production."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", directory / "dagster.yaml")
    return directory


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- long-running process trees (the trigger workloads' deployments) --------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick; a process started next can bind it)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, probe: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.5
) -> Any:
    """Poll ``probe`` until it returns something truthy; TimeoutError naming ``what`` at the
    deadline. ``probe`` may raise to give up early (a process that died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)  # a polling interval under the deadline above


def process_tree(root_pid: int) -> list[psutil.Process]:
    """``root_pid`` and every descendant of it alive now (empty when the root is gone)."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_times(root_pid: int) -> dict[tuple[int, float], tuple[float, str]]:
    """CPU seconds and command line per process of the tree (keyed by pid and start time, so a
    reused pid is another process): user + system + the children's user + system, i.e. the
    process's own CPU and that of every child it has reaped (see :class:`TreeCpu`)."""
    out: dict[tuple[int, float], tuple[float, str]] = {}
    for proc in process_tree(root_pid):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            cpu = float(t.user + t.system + t.children_user + t.children_system)
            out[(proc.pid, proc.create_time())] = (cpu, " ".join(proc.cmdline()))
    return out


@dataclass
class TreeCpu:
    """CPU a process tree used over a window: the sum over the tree at the end minus the sum at
    the start. A process that ends during the window is reaped by its parent, whose children
    times then hold all it ever used; its share at the start is subtracted, so only the window's
    part counts. A process that starts and ends inside the window counts whole, through its
    parent; one still running at the end counts from its start (or the window's)."""

    root_pid: int
    start: dict[tuple[int, float], tuple[float, str]] = field(default_factory=dict)
    end: dict[tuple[int, float], tuple[float, str]] = field(default_factory=dict)

    def begin(self) -> TreeCpu:
        self.start = tree_cpu_times(self.root_pid)
        return self

    def used_s(self) -> float:
        """The tree's CPU seconds since :meth:`begin` (and the snapshot :meth:`by_process` reads)."""
        self.end = tree_cpu_times(self.root_pid)
        return sum(c for c, _ in self.end.values()) - sum(c for c, _ in self.start.values())

    def by_process(self, label: Callable[[str], str]) -> dict[str, float]:
        """:meth:`used_s` split by ``label(command line)``, largest first. A process gone by the
        end shows as minus its share at the start: the rest of it is in its parent's."""
        out: dict[str, float] = {}
        for key in self.start.keys() | self.end.keys():
            cpu0, cmd = self.start.get(key, (0.0, ""))
            cpu1, cmd = self.end.get(key, (0.0, cmd))
            name = label(cmd)
            out[name] = out.get(name, 0.0) + cpu1 - cpu0
        return dict(sorted(((k, round(v, 2)) for k, v in out.items()), key=lambda kv: -kv[1]))


def stop_process_groups(
    procs: Sequence[subprocess.Popen[Any]], *, grace_s: float = 30.0, kill_wait_s: float = 10.0
) -> None:
    """Stop each of ``procs`` (started with ``start_new_session=True``) and everything under it,
    all at once: SIGTERM to their process groups, up to ``grace_s`` to end, then SIGKILL to the
    groups and to any descendant that left them. Only processes of these trees get a signal."""
    trees = [p for proc in procs for p in process_tree(proc.pid)]

    def alive() -> list[psutil.Process]:
        for proc in procs:
            proc.poll()  # reap our own children as soon as they exit
        out = []
        for p in trees:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            for p in alive():
                with contextlib.suppress(psutil.Error):
                    p.kill()
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for processes to exit, bounded
        if not alive():
            break
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
