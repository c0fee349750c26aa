"""The TypeScript package's three tasks, rendered faithfully in Python: the baseline every workload is held to.

As the TypeScript package wrote them: ``processStreamingVideoQueue``, ``processEmailQueue`` and
``cleanupExpiredSessions``. Same shape as the TypeScript: load the rows (``findMany``), then one
sequential loop with one request and one statement per row, each statement its own transaction
(Drizzle outside ``db.transaction`` autocommits), a child logger per item. Same database, same
engine settings (``alianza_jobs.db.engine.create_engine``: WAL, busy timeout), same
emulator on the same socket as our jobs. It writes only what the TypeScript package wrote: the
platform row's status and duration (videos), status, ``sent_at`` and error (emails); it has none of
the jobs' bookkeeping tables. The platform's tables are reflected through the run's schema map
(``ALIANZA_SCHEMA_MAP``, as our jobs read them), before the clock starts: Drizzle's schema is
declared in the TypeScript package's code, not read at run time. The statuses are the platform's
own values, which the TypeScript package wrote as they are.

Where the TypeScript package leaves something out, the baseline gets the benefit of the doubt, so every ratio
against it is, if anything, an understatement:

* one ``httpx.AsyncClient`` for the whole run (kept-alive connections; a Worker's ``fetch`` may
  open a new one per request);
* ``sendEmail`` waits out a 429 (``retry-after``) and tries again. The TypeScript package's loop would mark the
  email failed for good (``markEmailAsFailed``) and most of a backlog would never be sent under
  Resend's 5 requests/s; that is no throughput to compare with;
* the email queue is drained by calling the task again at once until nothing is pending (the TypeScript package
  takes 50 per cron tick, one tick a minute: 5,000 emails would take 100 minutes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.models import EmailStatus
from alianza_jobs.db.platform_models import UserSession
from alianza_jobs.db.platform_tables import PlatformTables, platform_tables
from alianza_jobs.db.schema_map import load_schema_map

BASELINE_EMAIL_LIMIT = 50  # processEmailQueue: findMany({ where: pending, limit: 50 })
HTTP_TIMEOUT_S = 30.0


class BaselineLogger:
    """The TypeScript package's ``logger.child(ctx)``: JSON lines with the bound context, on stderr."""

    def __init__(self, context: dict[str, Any] | None = None) -> None:
        self.context = dict(context or {})
        self._out = logging.getLogger("benchmarks.baseline")

    def child(self, **context: Any) -> BaselineLogger:
        return BaselineLogger({**self.context, **context})

    def _log(self, level: int, message: str, **fields: Any) -> None:
        if self._out.isEnabledFor(level):
            self._out.log(
                level, json.dumps({"msg": message, **self.context, **fields}, default=str)
            )

    def debug(self, message: str, **fields: Any) -> None:
        self._log(logging.DEBUG, message, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log(logging.INFO, message, **fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, message, **fields)

    def error(self, message: str, error: BaseException | None = None, **fields: Any) -> None:
        self._log(logging.ERROR, message, error=repr(error) if error else None, **fields)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("benchmarks.baseline")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


@dataclass
class Counters:
    processed: int = 0
    success: int = 0
    failed: int = 0
    http_requests: int = 0
    statements: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {
            "processed": self.processed,
            "success": self.success,
            "failed": self.failed,
            "http_requests": self.http_requests,
            "statements": self.statements,
            **self.extra,
        }


# -- @alianza/services --------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoStatus:
    status: str
    duration: float | None


@dataclass(frozen=True)
class ServiceResult:
    success: bool
    data: VideoStatus | None = None
    error: str | None = None


async def get_video_status(
    http: httpx.AsyncClient, account_id: str, external_id: str, counters: Counters
) -> ServiceResult:
    """``getVideoStatus(externalId)``: ``GET /accounts/{account}/stream/{uid}`` -> {success, data}."""
    counters.http_requests += 1
    response = await http.get(f"/accounts/{account_id}/stream/{external_id}")
    if response.status_code >= 400:
        return ServiceResult(False, error=f"HTTP {response.status_code}")
    body = response.json()
    result = body.get("result") or {}
    duration = result.get("duration")
    return ServiceResult(
        True,
        VideoStatus(
            status=str((result.get("status") or {}).get("state")),
            duration=float(duration) if isinstance(duration, int | float) else None,
        ),
    )


class SendEmailError(Exception):
    pass


async def send_email(
    http: httpx.AsyncClient, email: Any, email_from: str, counters: Counters
) -> str:
    """``sendEmail(email)``: one ``POST /emails``; waits out a 429 (see the module docstring)."""
    payload = {
        "from": email.from_address or email_from,
        "to": [email.to_address],
        "subject": email.subject,
        "html": email.html,
        "text": email.text,
    }
    while True:
        counters.http_requests += 1
        response = await http.post("/emails", json=payload)
        if response.status_code == 429:
            counters.extra["rate_limited"] = counters.extra.get("rate_limited", 0) + 1
            await asyncio.sleep(float(response.headers.get("retry-after") or 1))
            continue
        if response.status_code >= 400:
            raise SendEmailError(f"HTTP {response.status_code}: {response.text[:200]}")
        return str(response.json()["id"])


# -- the tasks ---------------------------------------------------------------------------------


async def process_streaming_video_queue(
    db: AsyncEngine,
    tables: PlatformTables,
    http: httpx.AsyncClient,
    account_id: str,
    logger: BaselineLogger,
) -> Counters:
    """``processStreamingVideoQueue``: one GET and (if settled) one UPDATE per queued video."""
    job_logger = logger.child(task="processStreamingVideoQueue")
    counters = Counters()
    streamings = tables.streamings
    async with db.connect() as conn:
        processing_videos = (
            await conn.execute(
                select(streamings.c.id, streamings.c.external_id, streamings.c.status).where(
                    streamings.c.status == "queued", streamings.c.provider == "cloudflare"
                )
            )
        ).all()
        await conn.commit()
    counters.statements += 1
    job_logger.info(f"Found {len(processing_videos)} videos to process")

    for video in processing_videos:
        video_logger = job_logger.child(videoId=video.id, externalId=video.external_id)
        counters.processed += 1
        try:
            video_result = await get_video_status(http, account_id, video.external_id, counters)
            if not video_result.success or video_result.data is None:
                raise RuntimeError(f"Failed to get video status: {video_result.error}")
            if video_result.data.status == "ready":
                async with db.begin() as conn:
                    await conn.execute(
                        update(streamings)
                        .where(streamings.c.id == video.id)
                        .values(status="ready", duration=video_result.data.duration)
                    )
                counters.statements += 1
                video_logger.info("Video marked as ready")
            elif video_result.data.status == "error":
                async with db.begin() as conn:
                    await conn.execute(
                        update(streamings).where(streamings.c.id == video.id).values(status="error")
                    )
                counters.statements += 1
                video_logger.warn("Video marked as error")
            counters.success += 1
        except Exception as error:
            counters.failed += 1
            video_logger.error("Failed to process video", error)
    return counters


async def mark_email_as_sent(
    db: AsyncEngine, tables: PlatformTables, email_id: str, counters: Counters
) -> None:
    emails = tables.email_queue
    async with db.begin() as conn:
        await conn.execute(
            update(emails)
            .where(emails.c.id == email_id)
            .values(status=EmailStatus.SENT.value, sent_at=datetime.now(UTC))
        )
    counters.statements += 1


async def mark_email_as_failed(
    db: AsyncEngine, tables: PlatformTables, email_id: str, message: str, counters: Counters
) -> None:
    emails = tables.email_queue
    async with db.begin() as conn:
        await conn.execute(
            update(emails)
            .where(emails.c.id == email_id)
            .values(status=EmailStatus.FAILED.value, last_error=message)
        )
    counters.statements += 1


async def process_email_queue(
    db: AsyncEngine,
    tables: PlatformTables,
    http: httpx.AsyncClient,
    email_from: str,
    logger: BaselineLogger,
    counters: Counters,
) -> int:
    """``processEmailQueue``: up to 50 pending emails, one POST and one UPDATE each."""
    queue = tables.email_queue
    async with db.connect() as conn:
        emails = (
            await conn.execute(
                select(queue)
                .where(queue.c.status == EmailStatus.PENDING.value)
                .limit(BASELINE_EMAIL_LIMIT)
            )
        ).all()
        await conn.commit()
    counters.statements += 1
    for email in emails:
        counters.processed += 1
        try:
            await send_email(http, email, email_from, counters)
            await mark_email_as_sent(db, tables, email.id, counters)
            counters.success += 1
        except Exception as error:
            logger.error("Failed to send email", error, emailId=email.id)
            await mark_email_as_failed(db, tables, email.id, str(error), counters)
            counters.failed += 1
    return len(emails)


async def drain_email_queue(
    db: AsyncEngine,
    tables: PlatformTables,
    http: httpx.AsyncClient,
    email_from: str,
    logger: BaselineLogger,
) -> Counters:
    """Call ``processEmailQueue`` back to back (one cron tick each) until nothing is pending."""
    counters = Counters()
    ticks = 0
    while await process_email_queue(db, tables, http, email_from, logger, counters):
        ticks += 1
    counters.extra["ticks"] = ticks
    return counters


async def cleanup_expired_sessions(db: AsyncEngine, logger: BaselineLogger) -> Counters:
    """``cleanupExpiredSessions``: load every expired session, delete them one by one."""
    counters = Counters()
    async with db.connect() as conn:
        expired_sessions = (
            await conn.execute(
                select(UserSession.__table__).where(UserSession.expires_at < datetime.now(UTC))
            )
        ).all()
        await conn.commit()
    counters.statements += 1
    logger.child(task="cleanupExpiredSessions").info(
        f"Found {len(expired_sessions)} expired sessions"
    )
    for session in expired_sessions:
        async with db.begin() as conn:
            await conn.execute(sql_delete(UserSession).where(UserSession.id == session.id))
        counters.statements += 1
        counters.processed += 1
        counters.success += 1
    return counters


def http_client(base_url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S,
    )


async def reflect(database_url: str, schema_map_path: str | None) -> PlatformTables:
    """The platform's tables through the schema map, on an engine of their own (disposed), so the
    measured run opens its connections exactly as it did before anything was reflected."""
    engine = create_engine(database_url)
    try:
        return await platform_tables(engine, load_schema_map(schema_map_path))
    finally:
        await engine.dispose()


async def run(task: str, *, database_url: str, env: dict[str, str]) -> tuple[Counters, float]:
    """Run one baseline task against ``database_url``; returns its counters and wall seconds."""
    logger = BaselineLogger()
    tables: PlatformTables | None = None
    if task != "cleanup_expired_sessions":
        tables = await reflect(database_url, env.get("ALIANZA_SCHEMA_MAP") or None)
    started = time.perf_counter()
    db = create_engine(database_url)
    try:
        if task == "process_streaming_video_queue":
            assert tables is not None
            async with http_client(
                env["CLOUDFLARE_API_BASE_URL"], env["CLOUDFLARE_STREAM_API_TOKEN"]
            ) as http:
                counters = await process_streaming_video_queue(
                    db, tables, http, env["CLOUDFLARE_ACCOUNT_ID"], logger
                )
        elif task == "process_email_queue":
            assert tables is not None
            async with http_client(env["RESEND_API_BASE_URL"], env["RESEND_API_KEY"]) as http:
                counters = await drain_email_queue(db, tables, http, env["EMAIL_FROM"], logger)
        elif task == "cleanup_expired_sessions":
            counters = await cleanup_expired_sessions(db, logger)
        else:
            raise ValueError(f"no baseline for {task!r}")
    finally:
        await db.dispose()
    return counters, time.perf_counter() - started
