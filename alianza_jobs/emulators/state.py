"""Emulator state in one SQLite file under the state directory, shared by every process.

Every Dagster run is its own process and may serve the emulators in-process, while ``alianza-jobs
emulate`` serves the same directory over a socket and a test flips faults from a third process. So
nothing that must be seen by another request lives in memory: videos, sent mail, idempotency keys,
rate-limit windows, request counters, the Stream webhook and its deliveries and the configuration
are rows here.
More: docs/platform.md, "alianza_jobs.emulators.state".
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio.to_thread

from alianza_jobs.emulators.config import EmulatorConfig, merge_config, parse_config

DB_FILENAME = "emulators.sqlite3"
SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 30_000

P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], float]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sequences (
    service TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_events (
    service TEXT NOT NULL,
    key TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_events_window ON rate_events (service, key, ts);
CREATE TABLE IF NOT EXISTS penalties (
    service TEXT NOT NULL,
    key TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (service, key)
);
CREATE TABLE IF NOT EXISTS counters (
    service TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (service, endpoint, status)
);
CREATE TABLE IF NOT EXISTS videos (
    uid TEXT PRIMARY KEY,
    created_us INTEGER NOT NULL,
    started_us INTEGER NOT NULL,
    queued_us INTEGER NOT NULL,
    inprogress_us INTEGER NOT NULL,
    final_us INTEGER NOT NULL,
    initial_state TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration REAL NOT NULL,
    error_code TEXT,
    error_text TEXT,
    legacy_error_spelling INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    creator TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    deleted_us INTEGER
);
CREATE INDEX IF NOT EXISTS videos_created ON videos (created_us, uid);
CREATE INDEX IF NOT EXISTS videos_final ON videos (final_us);
CREATE TABLE IF NOT EXISTS emails (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    api_key_sha256 TEXT NOT NULL,
    from_addr TEXT NOT NULL,
    to_json TEXT NOT NULL,
    cc_json TEXT,
    bcc_json TEXT,
    reply_to_json TEXT,
    subject TEXT NOT NULL,
    html TEXT,
    text TEXT,
    headers_json TEXT,
    tags_json TEXT,
    scheduled_at TEXT,
    idempotency_key TEXT,
    batch_index INTEGER,
    fingerprint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS emails_seq ON emails (seq);
CREATE INDEX IF NOT EXISTS emails_fingerprint ON emails (fingerprint);
CREATE INDEX IF NOT EXISTS emails_idempotency ON emails (idempotency_key);
CREATE INDEX IF NOT EXISTS emails_created ON emails (created_us);
CREATE TABLE IF NOT EXISTS idempotency (
    api_key_sha256 TEXT NOT NULL,
    key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_sha256, key)
);
CREATE TABLE IF NOT EXISTS webhook (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    notification_url TEXT NOT NULL,
    secret TEXT NOT NULL,
    account_id TEXT NOT NULL,
    modified_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    uid TEXT PRIMARY KEY,
    final_us INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_us INTEGER NOT NULL,
    delivered_us INTEGER,
    last_status INTEGER
);
"""

_DATA_TABLES = (
    "sequences",
    "rate_events",
    "penalties",
    "counters",
    "videos",
    "emails",
    "idempotency",
    "webhook",
    "webhook_deliveries",
)


@dataclass(frozen=True)
class Admission:
    """What the rate limiter decided for one request."""

    seq: int
    """This request's number for its service: seeds its fault draws."""
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    """Seconds until the window has room again."""
    retry_after_s: int | None


@dataclass(frozen=True)
class Counter:
    service: str
    endpoint: str
    status: int
    """HTTP status the client saw; 0 for a connection reset."""
    count: int


_local = threading.local()
_schema_lock = threading.Lock()
_schema_ready: set[str] = set()


class StateStore:
    """Access to one state directory. Cheap to construct: nothing touches the disk until used."""

    def __init__(self, state_dir: Path | str, *, clock: Clock | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_FILENAME
        self._clock: Clock = clock or time.time
        self._overrides: dict[str, Any] = {}

    # -- connections -------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened, and the schema created, on first use)."""
        # One connection per thread and process: sqlite3 connections must not cross threads, and
        # one inherited through fork() would share file locks with the parent.
        conns: dict[tuple[int, str], sqlite3.Connection] = getattr(_local, "conns", None) or {}
        _local.conns = conns
        key = (os.getpid(), str(self.path))
        conn = conns.get(key)
        if conn is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
            conns[key] = conn
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        marker = f"{os.getpid()}:{self.path}"
        with _schema_lock:
            if marker in _schema_ready:
                return
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version < SCHEMA_VERSION:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            _schema_ready.add(marker)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the write lock from its first statement."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking state operation in a worker thread.

        Not abandoned on cancellation: a write that has started finishes (and commits or rolls
        back) before the cancelled request unwinds, so a timeout never leaves half a change.
        """

        def run() -> T:
            return fn(*args, **kwargs)

        return await anyio.to_thread.run_sync(run)

    # -- configuration and clock -------------------------------------------------------------

    def set_overrides(self, overrides: Mapping[str, Any]) -> None:
        """Process-local settings laid over the stored config (``alianza-jobs emulate`` flags)."""
        parse_config(merge_config({}, overrides))  # fail early on a bad override
        self._overrides = dict(overrides)

    def _stored_config(self, conn: sqlite3.Connection) -> dict[str, Any]:
        row = conn.execute("SELECT body FROM config WHERE id = 1").fetchone()
        return dict(json.loads(row["body"])) if row else {}

    def config(self) -> EmulatorConfig:
        conn = self.connection()
        return parse_config(merge_config(self._stored_config(conn), self._overrides))

    def update_config(self, patch: Mapping[str, Any]) -> EmulatorConfig:
        """Merge ``patch`` into the stored config (validated first: a bad patch changes nothing)."""
        with self.write() as conn:
            stored = merge_config(self._stored_config(conn), patch)
            parse_config(stored)
            conn.execute(
                "INSERT INTO config (id, body) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                (json.dumps(stored),),
            )
        return self.config()

    def now(self, config: EmulatorConfig | None = None) -> float:
        """Emulated time: the (injectable) clock, or the frozen instant, plus the stored offset."""
        cfg = config or self.config()
        base = cfg.frozen_clock_s if cfg.frozen_clock_s is not None else self._clock()
        return base + cfg.clock_offset_s

    def advance_clock(self, seconds: float) -> float:
        with self.write() as conn:
            stored = self._stored_config(conn)
            stored["clock_offset_s"] = float(stored.get("clock_offset_s", 0.0)) + float(seconds)
            conn.execute(
                "INSERT INTO config (id, body) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                (json.dumps(stored),),
            )
        return self.now()

    # -- rate limits, sequences and counters ------------------------------------------------------

    def admit(
        self,
        service: str,
        key: str,
        *,
        now: float,
        limit: int,
        window_s: float,
        penalty_s: float | None,
    ) -> Admission:
        """Number the request and apply a sliding-window limit of ``limit`` per ``window_s``.

        The window is exact (a log of request times), so a client that never sends more than
        ``limit`` requests in any ``window_s`` is never refused. With ``penalty_s`` (Cloudflare),
        the request that exceeds the limit starts a penalty during which every call is refused,
        whatever the window says; without it (Resend) calls are refused until the window has room.
        Refused calls are not logged: they do not extend the window.
        """
        with self.write() as conn:
            seq = conn.execute(
                "INSERT INTO sequences (service, n) VALUES (?, 1) "
                "ON CONFLICT (service) DO UPDATE SET n = n + 1 RETURNING n",
                (service,),
            ).fetchone()[0]
            if penalty_s is not None:
                row = conn.execute(
                    "SELECT until FROM penalties WHERE service = ? AND key = ?", (service, key)
                ).fetchone()
                if row is not None and row["until"] > now:
                    wait = _ceil_s(row["until"] - now)
                    return Admission(seq, False, limit, 0, wait, wait)
            conn.execute(
                "DELETE FROM rate_events WHERE service = ? AND key = ? AND ts <= ?",
                (service, key, now - window_s),
            )
            count, oldest = conn.execute(
                "SELECT COUNT(*), MIN(ts) FROM rate_events WHERE service = ? AND key = ?",
                (service, key),
            ).fetchone()
            if count >= limit:
                if penalty_s is not None:
                    until = now + penalty_s
                    conn.execute(
                        "INSERT INTO penalties (service, key, until) VALUES (?, ?, ?) "
                        "ON CONFLICT (service, key) DO UPDATE SET until = excluded.until",
                        (service, key, until),
                    )
                    wait = _ceil_s(penalty_s)
                else:
                    wait = _ceil_s(oldest + window_s - now)
                return Admission(seq, False, limit, 0, wait, wait)
            conn.execute(
                "INSERT INTO rate_events (service, key, ts) VALUES (?, ?, ?)", (service, key, now)
            )
            first = oldest if oldest is not None else now
            return Admission(
                seq=seq,
                allowed=True,
                limit=limit,
                remaining=limit - count - 1,
                reset_s=_ceil_s(first + window_s - now),
                retry_after_s=None,
            )

    def count(self, service: str, endpoint: str, status: int) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO counters (service, endpoint, status, n) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (service, endpoint, status) DO UPDATE SET n = n + 1",
                (service, endpoint, status),
            )

    def counters(self) -> list[Counter]:
        rows = (
            self.connection()
            .execute(
                "SELECT service, endpoint, status, n FROM counters "
                "ORDER BY service, endpoint, status"
            )
            .fetchall()
        )
        return [Counter(r["service"], r["endpoint"], r["status"], r["n"]) for r in rows]

    def reset_counters(self) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM counters")

    def reset(self, *, keep_config: bool = False) -> None:
        """Forget everything (and, unless ``keep_config``, the configuration too)."""
        with self.write() as conn:
            for table in _DATA_TABLES:
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            if not keep_config:
                conn.execute("DELETE FROM config")


def _ceil_s(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-9))
