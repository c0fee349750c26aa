"""Fault hooks: where a run is killed, its connection cut, or held at a barrier.

Armed in a child process by environment variables (see :mod:`.crashsite`), or in the test process
by calling the installers directly:

* ``ALIANZA_TEST_CRASH_AT=sql:before:7`` — SIGKILL this process just before the 7th statement on
  the application database (everything committed before it stays, the open transaction is rolled
  back by the server); ``sql:after:7`` just after it executed (inside its transaction, uncommitted);
  ``http:before:2`` before the 2nd API request is sent; ``http:during:2`` while it is in flight (the
  server has it and carries on without us); ``http:after:2`` once its answer has arrived, before the
  task could record it (the lost-answer case).
* ``ALIANZA_TEST_HOOK_COUNTS=<file>`` — at exit, write how many app statements and API requests
  the process made (the calibration run that crash points are drawn from).
* ``ALIANZA_TEST_BARRIER=<dir>`` — at the first app statement, announce arrival in ``<dir>`` and
  wait (polling, bounded) for ``<dir>/go``: two runs forced to start their work at the same moment.
  With ``ALIANZA_TEST_BARRIER_MATCH=<text>`` the barrier is the first statement containing it.

The kill is a real ``SIGKILL`` of the process running the op (the CLI runs ops in its own process):
no ``finally`` block, no ``atexit``, no release of leases.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

CRASH_AT = "ALIANZA_TEST_CRASH_AT"
HOOK_COUNTS = "ALIANZA_TEST_HOOK_COUNTS"
BARRIER = "ALIANZA_TEST_BARRIER"
BARRIER_MATCH = "ALIANZA_TEST_BARRIER_MATCH"
BARRIER_TIMEOUT_S = 60.0
# How long an `http:during` kill lets the request travel first: ample on loopback for the server
# to have it, and well inside the latency the crash tests give the emulator.
DURING_S = 0.05

Target = Literal["sql", "http"]
When = Literal["before", "during", "after"]


@dataclass(frozen=True)
class CrashPoint:
    target: Target
    when: When
    n: int

    def __str__(self) -> str:
        return f"{self.target}:{self.when}:{self.n}"

    @classmethod
    def parse(cls, text: str) -> CrashPoint:
        target, when, n = text.split(":")
        if target not in ("sql", "http") or when not in ("before", "during", "after"):
            raise ValueError(f"bad crash point {text!r}")
        if target == "sql" and when == "during":
            raise ValueError("sql crash points are before or after a statement")
        return cls(target, when, int(n))  # type: ignore[arg-type]


def die(reason: str) -> None:
    """SIGKILL ourselves, after one unbuffered line saying where (the parent keeps stderr)."""
    os.write(2, f"\n[reliability] SIGKILL at {reason}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def database_name(url: str) -> str | None:
    return make_url(url).database


class AppStatements:
    """Numbers the statements on one database (the app's), however many engines a run opens on it.

    Listens on the ``Engine`` class, so it sees the engines tasks create inside their ops; other
    databases (Dagster's own SQLite storage) are ignored by name. A statement gets its number when
    it starts: two workers of one run interleave their statements, and a number given on
    completion would be seen twice (or skipped) by the hooks that wait for it.
    """

    def __init__(self, database: str | None) -> None:
        self.database = database
        self.started = 0
        self.count = 0
        """Statements that finished."""
        self.before: list[Callable[[Connection, int, str], None]] = []
        self.after: list[Callable[[Connection, int, str], None]] = []
        self._listeners: list[tuple[str, Callable[..., None]]] = []
        self.on("before_cursor_execute", self._before)
        self.on("after_cursor_execute", self._after)

    def ours(self, conn: Connection) -> bool:
        return self.database is not None and conn.engine.url.database == self.database

    def _before(self, conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if not self.ours(conn):
            return
        self.started += 1
        number = self.started
        conn.info["reliability_statement"] = number
        for hook in self.before:
            hook(conn, number, statement)

    def _after(self, conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if not self.ours(conn):
            return
        self.count += 1
        number = int(conn.info.get("reliability_statement", 0))
        for hook in self.after:
            hook(conn, number, statement)

    def on(self, name: str, fn: Callable[..., None]) -> None:
        event.listen(Engine, name, fn)
        self._listeners.append((name, fn))

    def remove(self) -> None:
        for name, fn in self._listeners:
            event.remove(Engine, name, fn)
        self._listeners.clear()


def install_crash(point: CrashPoint, statements: AppStatements, http: HttpCounter) -> None:
    if point.target == "sql":

        def crash(_conn: Connection, number: int, _statement: str) -> None:
            if number == point.n:
                die(str(point))

        (statements.before if point.when == "before" else statements.after).append(crash)
    else:
        http.crash = point


class HttpCounter:
    """Counts (and may crash around) every request an ``httpx.AsyncClient`` sends."""

    def __init__(self) -> None:
        self.count = 0
        self.crash: CrashPoint | None = None
        self._original: Any = None

    def install(self) -> None:
        original = httpx.AsyncClient.send
        self._original = original
        counter = self

        async def send(client: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
            counter.count += 1
            n, point = counter.count, counter.crash
            hit = point is not None and point.n == n
            if hit and point is not None and point.when == "before":
                die(str(point))
            if hit and point is not None and point.when == "during":
                in_flight = asyncio.ensure_future(original(client, request, **kw))
                await asyncio.wait({in_flight}, timeout=DURING_S)
                die(str(point))
            response = await original(client, request, **kw)
            if hit and point is not None and point.when == "after":
                die(str(point))
            return response

        setattr(httpx.AsyncClient, "send", send)  # noqa: B010 - patching a method on purpose

    def uninstall(self) -> None:
        if self._original is not None:
            setattr(httpx.AsyncClient, "send", self._original)  # noqa: B010
            self._original = None


def install_barrier(directory: Path, statements: AppStatements, match: str = "") -> None:
    arrived: list[bool] = []

    def wait(_conn: Connection, _number: int, statement: str) -> None:
        if arrived or match not in statement:
            return
        arrived.append(True)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"arrived-{os.getpid()}").touch()
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        # Blocking on purpose: nothing of this run may start before the go.
        while not (directory / "go").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"barrier {directory}: no go within {BARRIER_TIMEOUT_S:g} s")
            time.sleep(0.02)  # polling the go file under the deadline above

    statements.before.append(wait)


def install_from_env() -> None:
    """Arm what the environment asks for (a no-op when it asks for nothing)."""
    url = os.environ.get("DATABASE_URL", "")
    statements = AppStatements(database_name(url) if url else None)
    http = HttpCounter()
    crash = os.environ.get(CRASH_AT, "").strip()
    counts = os.environ.get(HOOK_COUNTS, "").strip()
    barrier = os.environ.get(BARRIER, "").strip()
    if not (crash or counts or barrier):
        return
    if barrier:
        install_barrier(Path(barrier), statements, os.environ.get(BARRIER_MATCH, ""))
    if crash:
        install_crash(CrashPoint.parse(crash), statements, http)
    http.install()
    if counts:

        def write_counts() -> None:
            Path(counts).write_text(json.dumps({"sql": statements.count, "http": http.count}))

        atexit.register(write_counts)


# -- faults the test process applies to its own runs --------------------------------------------------


def terminate_backend_at(
    statements: AppStatements, n: int, admin_url: str, fired: list[int]
) -> None:
    """Before the ``n``-th app statement, ``pg_terminate_backend`` the connection about to run it
    (from another session, as an operator or a failover would)."""

    def cut(conn: Connection, number: int, _statement: str) -> None:
        if number != n:
            return
        driver = conn.connection.driver_connection
        pid = driver.info.backend_pid  # type: ignore[union-attr]
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        fired.append(pid)

    statements.before.append(cut)


@dataclass
class SqliteLocker:
    """Another process holding SQLite's write lock (``BEGIN EXCLUSIVE``) for ``hold_s`` seconds."""

    path: Path
    hold_s: float
    proc: subprocess.Popen[str] | None = None

    SCRIPT = (
        "import sqlite3, sys, time\n"
        "conn = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)\n"
        "conn.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"  # the fault itself: how long the other writer holds on
        "conn.execute('ROLLBACK')\n"
        "print('released', flush=True)\n"
    )

    def lock(self) -> None:
        """Start the other writer and return once it holds the lock."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(self.path), str(self.hold_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "locked":
            raise RuntimeError(f"the locker did not get the lock: {line!r}")

    def wait(self, timeout: float = 60.0) -> None:
        if self.proc is not None:
            self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def lock_sqlite_at_begin(
    statements: AppStatements, n: int, locker: SqliteLocker, fired: list[int]
) -> None:
    """Before the ``n``-th transaction on the app database, another process takes the write lock."""
    begins = [0]
    lock = threading.Lock()

    def begin(conn: Connection) -> None:
        if not statements.ours(conn):
            return
        with lock:
            begins[0] += 1
            if begins[0] != n:
                return
        locker.lock()
        fired.append(n)

    # Inserted first: it must run before the engine's own BEGIN IMMEDIATE listener.
    event.listen(Engine, "begin", begin, insert=True)
    statements._listeners.append(("begin", begin))
