"""Timeouts: a task stuck on an API call is cancelled at its timeout, gives back what it claimed, is
retried, and the next attempt finishes the work.

The tasks' real timeouts are one and two minutes; here the same op functions run under the same
TaskSpec machinery (``asyncio.timeout``, RetryPolicy) with an 8 s timeout (the retry's whole attempt
must fit in it on a loaded machine) and a 0.2 s retry delay. The stuck call is the emulator's own
``slow`` fault, seeded so that exactly the first request of the run hangs (far longer than the
timeout) and every later one is prompt, or, for the send that must outlive the timeout and then be
delivered, the first request held in flight until the retry has met it there. Client read
timeouts stay at their defaults (20 s): the task's timeout is what must fire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from dagster import DagsterInstance, build_op_context

from alianza_jobs.defs.emails import process_email_queue as email_task
from alianza_jobs.defs.emails import queue_sql as email_queue_sql
from alianza_jobs.defs.videos import process_streaming_video_queue as video_task
from alianza_jobs.emulators.config import FaultSettings, ResendSettings, StreamSettings
from alianza_jobs.emulators.faults import FaultKind, plan_faults
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import (
    Namespace,
    audit_emails,
    audit_queue,
    audit_videos,
    email_rows,
    failure_of,
    fast_job,
    held_until_met_in_flight,
    metadata_of,
    resources,
    retries_of,
    run_async,
    run_in_process,
    seed_emails,
    seed_videos,
    streaming_rows,
)

T = TypeVar("T")
TIMEOUT = timedelta(seconds=8)
TIMED_OUT = f"exceeded its {TIMEOUT.total_seconds():g} s timeout"
STUCK_MS = 30_000.0


def first_request_stuck(
    settings: FaultSettings, service: str, *, fails: bool, horizon: int = 20
) -> int:
    """A seed where request 1 hangs (and, with ``fails``, would then fail unprocessed) and
    requests 2..horizon are prompt and clean (more than a run here makes)."""
    for seed in range(100_000):
        first = plan_faults(settings, seed=seed, service=service, seq=1)
        if first.delay_s * 1000 < settings.slow_ms or (first.kind is FaultKind.ERROR) != fails:
            continue
        if all(
            (plan := plan_faults(settings, seed=seed, service=service, seq=q)).kind
            is FaultKind.NONE
            and plan.delay_s * 1000 < settings.slow_ms
            for q in range(2, horizon + 1)
        ):
            return seed
    raise AssertionError("no such seed")


def _released_between_attempts(instance: DagsterInstance, run_id: str, phrase: str) -> bool:
    """The first attempt logged giving its rows back before the retry started."""
    messages = [entry.user_message for entry in instance.all_logs(run_id)]
    retry = next(i for i, m in enumerate(messages) if "Retry" in m or "retry" in m)
    return any(phrase in m for m in messages[:retry])


def test_video_task_stuck_on_the_listing(
    pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    knobs = {"slow_rate": 0.05, "slow_ms": STUCK_MS}
    seed = first_request_stuck(StreamSettings(**knobs), "stream", fails=False)
    emulators.control.update_config({"seed": seed, "stream": knobs})
    queue = run_async(seed_videos(pg_url, emulators.stream, "stuck"))
    instance = DagsterInstance.get()
    job = fast_job(video_task.TASK, video_task.check_queued_videos, timeout=TIMEOUT, retries=2)

    result = run_in_process(
        job,
        pg_url,
        emulators,
        "check_queued_videos",
        {"page_size": 5, "lookup_batch_size": 2},
        instance=instance,
    )

    audit = run_async(audit_videos(pg_url, queue))
    outcome.add_audit(
        "timeouts",
        "stuck on an API call: cancelled at the timeout, rows given back, retried (stream)",
        runs=1,
        audit=audit,
    )
    assert result.success
    assert retries_of(result) == 1
    records = instance.all_logs(result.run_id)
    assert any("TaskTimeoutError" in (r.user_message or "") or TIMED_OUT in str(r) for r in records)
    assert _released_between_attempts(instance, result.run_id, "Gave back rows left")
    assert audit.ok(), audit.explain()


@pytest.mark.parametrize(
    "processed",
    [False, True],
    ids=["stuck-and-never-processed", "stuck-but-delivered-after-the-timeout"],
)
def test_email_task_stuck_on_a_send(
    processed: bool, pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    """Cancelled mid-request: the rows keep their key and the retry re-sends the same batch.
    Unprocessed, it is sent now; delivered after the timeout (Resend finishes what it started),
    the re-send meets it in flight (409), then gets its answer from the cache: never twice."""
    in_flight: AbstractContextManager[None]
    if processed:
        # Held in flight past the timeout, let go once the retry's re-send met it (409): then
        # delivered, before the retry gives up.
        in_flight = held_until_met_in_flight(emulators)
    else:
        knobs = {
            "slow_rate": 0.05,
            "slow_ms": STUCK_MS,
            "error_rate": 0.05,
            "error_statuses": [503],
            "fault_after_processing_share": 0.0,
        }
        seed = first_request_stuck(ResendSettings(**knobs), "resend", fails=True)
        emulators.control.update_config({"seed": seed, "resend": knobs})
        in_flight = nullcontext()
    queue = run_async(seed_emails(pg_url, "stuck", valid=30))
    instance = DagsterInstance.get()
    job = fast_job(email_task.TASK, email_task.send_due_emails, timeout=TIMEOUT, retries=2)

    with in_flight:
        result = run_in_process(
            job,
            pg_url,
            emulators,
            "send_due_emails",
            {"batch_size": 10, "concurrency": 1, "backoff_base_s": 0.0},
            instance=instance,
        )

    audit = run_async(audit_emails(pg_url, emulators.resend, queue))
    outcome.add_audit(
        "timeouts",
        "stuck on a send: cancelled, key kept, retried under the same key "
        f"({'delivered after the timeout' if processed else 'never processed'}) (resend)",
        runs=1,
        audit=audit,
    )
    assert result.success, failure_of(result, "send_due_emails")
    assert retries_of(result) == 1
    messages = " ".join(r.user_message or "" for r in instance.all_logs(result.run_id))
    assert TIMED_OUT in messages
    # The retry took the interrupted batch back as a group, under its key.
    assert metadata_of(result, "send_due_emails")["resent"] >= 1
    assert audit.ok(), audit.explain()
    if processed:
        served = {c.status for c in emulators.control.counters() if c.service == "resend"}
        assert 409 in served  # the re-send met the first one still in flight


def cancelled_as_it_commits(
    claim: Callable[..., Awaitable[T]], fired: list[bool]
) -> Callable[..., Awaitable[T]]:
    """The claim commits, then the cancellation lands (the task's timeout, or a sibling worker's
    failure cancelling this one) before its caller sees the rows: once (``fired`` records it)."""

    async def claimed_then_cancelled(*args: Any, **kwargs: Any) -> T:
        result = await claim(*args, **kwargs)
        if not fired:
            fired.append(True)
            raise asyncio.CancelledError
        return result

    return claimed_then_cancelled


@pytest.mark.parametrize("queue", ["email", "video"])
def test_cancelled_just_as_the_claim_commits(
    queue: str,
    pg_url: str,
    emulators: Namespace,
    monkeypatch: pytest.MonkeyPatch,
    outcome: Outcomes,
) -> None:
    """Cancellation can land at any await, including the one that commits the claim: the rows
    are leased but the code holding them never saw them. They must still be given back on the
    way out, or they sit out the whole lease (3 minutes) while the retry finds nothing to do."""
    res = resources(pg_url, emulators)
    config: Any
    fired: list[bool] = []
    if queue == "email":
        work: Any = run_async(seed_emails(pg_url, "cancel", valid=30))
        # The run's first claim is of fresh rows (no group awaits a retry yet).
        monkeypatch.setattr(
            email_queue_sql,
            "claim_fresh",
            cancelled_as_it_commits(email_queue_sql.claim_fresh, fired),
        )
        op, config = email_task.send_due_emails, email_task.EmailQueueConfig(batch_size=10)
    else:
        work = run_async(seed_videos(pg_url, emulators.stream, "cancel"))
        monkeypatch.setattr(
            video_task, "lease_due_rows", cancelled_as_it_commits(video_task.lease_due_rows, fired)
        )
        op, config = video_task.check_queued_videos, video_task.VideoQueueConfig()

    async def attempt() -> None:
        # The video op is cancelled whole; of the email op, one worker is.
        with build_op_context(resources=res) as context, suppress(asyncio.CancelledError):
            await op(context, config)

    run_async(attempt())
    assert fired, "the claim was never cancelled: the fault did not reach the task"
    rows = run_async(email_rows(pg_url) if queue == "email" else streaming_rows(pg_url))
    leased = [i for i, r in rows.items() if r["locked_by"] is not None]
    monkeypatch.undo()
    # The next attempt (the op's retry, here right away) finishes everything.
    run_async(attempt())
    audit = run_async(audit_queue(pg_url, emulators, work))
    outcome.add_audit(
        "timeouts",
        f"cancelled just as the claim committed: rows given back at once ({queue} queue)",
        runs=2,
        audit=audit,
        also_lost=len(leased),
    )
    assert not leased, f"{len(leased)} rows left leased by a cancelled attempt"
    assert audit.ok(), audit.explain()
