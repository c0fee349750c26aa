"""Email: the queue that sends through Resend, and its table."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.emails import process_email_queue
from alianza_jobs.defs.emails.assets import EMAIL_QUEUE
from alianza_jobs.platform.freshness import with_freshness
from alianza_jobs.platform.task import TaskSpec
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    task, job = process_email_queue.TASK, process_email_queue.job
    return dg.Definitions(
        # Stale (an alert) when no run and no nothing-due tick has updated it for its window.
        assets=[with_freshness(EMAIL_QUEUE, task, settings)],
        jobs=[job],
        # The per-minute schedule is the TypeScript package's contract and the safety net; the
        # work sensor (definitions.py) sends new email within seconds.
        schedules=[task.schedule(job, settings)],
    )


def sensed_queues() -> list[tuple[TaskSpec, dg.JobDefinition]]:
    """The jobs the work sensor launches when their queue has work."""
    return [(process_email_queue.TASK, process_email_queue.job)]
