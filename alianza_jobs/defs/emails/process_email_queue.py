"""``process_email_queue``: the TaskSpec, the op and the job that send every due email through
Resend exactly once; the op checks ``EMAIL_FROM``, opens the database and the Resend client, runs an
:class:`~alianza_jobs.defs.emails.sending.EmailQueueRun`, and fails without op retries on a stop
that retrying soon cannot fix (401/403, quota, breaker open). How: ``docs/emails.md``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from dagster import Backoff, Failure, Jitter, OpExecutionContext

from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails import queue_sql
from alianza_jobs.defs.emails.config import EmailQueueConfig
from alianza_jobs.defs.emails.rules import InvalidEmail, prepare_email
from alianza_jobs.defs.emails.sending import EmailQueueRun
from alianza_jobs.logs import get_logger
from alianza_jobs.platform.breakers import DatabaseBreakerStore
from alianza_jobs.platform.failures import dagster_failure
from alianza_jobs.platform.schedules import Backlog
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.resources import AppConfig, Database, ResendEmail

# The probe counts no further: enough to say "there is work" and roughly how much.
BACKLOG_CAP = 1000


def due_emails(database: Database) -> Backlog:
    """The schedule's and the sensor's question: are there emails a run would send now?"""
    with database.probe() as (conn, tables):
        count = queue_sql.count_due(conn, tables, now=utcnow(), cap=BACKLOG_CAP)
    return Backlog(count, "due emails" if count != 1 else "due email")


TASK = TaskSpec(
    name="process_email_queue",
    description=(
        "Sends due emails through Resend in batches of up to 100, exactly once (idempotency keys "
        "stamped before sending), retries with backoff, and dead-letters invalid or refused ones."
    ),
    cron="* * * * *",
    timeout=timedelta(minutes=1),
    retry=Retry(
        max_retries=3,
        delay=timedelta(seconds=10),
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    ),
    assets=["email_queue"],
    backlog=due_emails,
)


@TASK.op
async def send_due_emails(
    context: OpExecutionContext,
    config: EmailQueueConfig,
    database: Database,
    resend: ResendEmail,
    app: AppConfig,
) -> TaskReport:
    log = get_logger()
    try:
        prepare_email(
            to_address="check@example.com",
            from_address=None,
            subject="check",
            html=None,
            text="check",
            default_from=app.email_from,
        )
    except InvalidEmail as err:
        raise Failure(
            description=f"EMAIL_FROM is not a usable sender ({err.reason}); fix the setting",
            allow_retries=False,
        ) from None
    async with (
        database.engine() as engine,
        resend.client(breaker_store=DatabaseBreakerStore(engine)) as api,
    ):
        run = EmailQueueRun(
            engine=engine,
            # Checked before anything is claimed: a database that cannot hold what the run
            # writes fails here, not halfway through a batch.
            tables=await database.platform(engine),
            api=api,
            config=config,
            default_from=app.email_from,
            run_id=context.run_id,
            log=log,
        )
        try:
            report = await run.run()
        except BaseExceptionGroup as group:
            # One worker failed (a database error): the others were cancelled and gave their
            # rows back. Re-raise that error itself, so the log and the retry policy see it.
            raise _first_error(group) from None
    log.info("Email queue run finished", **report.counts, stopped=report.metadata["stopped"])
    stop = run.stop
    if stop is not None and stop.fail and stop.error is not None:
        log.error("Email queue stopped by a failure that retrying soon cannot fix", stop.error)
        raise dagster_failure(stop.error)
    if stop is not None and stop.error is not None:
        log.warning("Email queue stopped early", reason=stop.reason, error=str(stop.error))
    return report


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


job = TASK.job(send_due_emails)


__all__ = [
    "TASK",
    "EmailQueueConfig",
    "EmailQueueRun",
    "job",
    "send_due_emails",
]
