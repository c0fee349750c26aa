"""API faults, from the emulators' own fault knobs, against both queue tasks on Postgres.

* Transient faults (5xx as JSON and as a CDN's HTML page, malformed JSON, dropped connections,
  answers slower than the client's timeout) come in seeded bursts shorter than the client's
  attempts: each is retried inside the call, and the run succeeds in its first attempt.
* A 429 storm: a neighbour sharing Resend's rate limit; Cloudflare's penalty with a short and with
  its real five-minute ``retry-after``.
* A sustained outage opens the breaker; the next run fails fast without a request; after the
  cool-down one probe closes it and the work completes.
* Auth revoked mid-run: the task fails once (no op retries) with a clear error that names no
  secret, the rows are given back, and the failure sensor raises the alert.
* Resend's 409 ``concurrent_idempotent_requests``: a retry meeting its own first send still in
  flight waits for it and gets its answer, not a second delivery.

Every test ends with the work done and audited: each row in its one correct state, no email twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    build_run_status_sensor_context,
)
from sqlalchemy import select, update

from alianza_jobs.db.models import CircuitBreaker
from alianza_jobs.db.platform_models import EmailQueue
from alianza_jobs.defs.alerts.sensors import alert_on_run_failure
from alianza_jobs.defs.emails import process_email_queue as email_task
from alianza_jobs.defs.videos import process_streaming_video_queue as video_task
from alianza_jobs.emulators.config import FaultSettings, ResendSettings, StreamSettings
from alianza_jobs.emulators.faults import FaultKind, plan_faults
from alianza_jobs.resources import AppConfig, Database
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import (
    RESEND_KEY,
    STREAM_TOKEN,
    Namespace,
    audit_emails,
    audit_queue,
    audit_videos,
    email_rows,
    failure_of,
    fast_job,
    held_until_met_in_flight,
    metadata_of,
    retries_of,
    run_async,
    run_in_process,
    seed_emails,
    seed_videos,
    streaming_rows,
    wait_for,
    with_engine,
)

EMAIL_OP = "send_due_emails"
VIDEO_OP = "check_queued_videos"
EMAIL_CONFIG: dict[str, Any] = {"batch_size": 10, "concurrency": 1, "backoff_base_s": 0.0}
VIDEO_CONFIG: dict[str, Any] = {"page_size": 5, "lookup_batch_size": 2}
CLIENT: dict[str, Any] = {"read_timeout_s": 1.0, "max_attempts": 3}
SERVICE = {"resend": "resend", "stream": "stream"}

TRANSIENT: dict[str, dict[str, Any]] = {
    "5xx burst (500, JSON error body)": {"error_rate": 0.4, "error_statuses": [500]},
    "5xx burst (502/503, a CDN's HTML page)": {"error_rate": 0.4, "error_statuses": [502, 503]},
    "malformed JSON (body cut in half)": {"malformed_rate": 0.4},
    "connection reset after the status line": {"reset_rate": 0.4},
    "answer slower than the client's 1 s timeout": {"slow_rate": 0.4, "slow_ms": 1500.0},
}


def faulty(settings: FaultSettings, seed: int, service: str, seq: int) -> bool:
    plan = plan_faults(settings, seed=seed, service=service, seq=seq)
    slow = settings.slow_rate > 0 and plan.delay_s * 1000 >= settings.slow_ms
    return plan.kind is not FaultKind.NONE or slow


def burst_seed(settings: FaultSettings, service: str, attempts: int, horizon: int = 80) -> int:
    """A seed whose faults come in bursts: the very first request is hit, bursts of two occur,
    none as long as a call's ``attempts`` (so the client's own retries must absorb every one)."""
    for seed in range(20_000):
        pattern = [faulty(settings, seed, service, q) for q in range(1, horizon + 1)]
        runs, current = [], 0
        for hit in [*pattern, False]:
            if hit:
                current += 1
            elif current:
                runs.append(current)
                current = 0
        if pattern[0] and pattern[1] and max(runs) < attempts:
            return seed
    raise AssertionError("no seed gives bursts short enough")


def statuses(ns: Namespace, service: str) -> Counter[int]:
    served: Counter[int] = Counter()
    for counter in ns.control.counters():
        if counter.service == service:
            served[counter.status] += counter.count
    return served


@pytest.mark.parametrize("fault", list(TRANSIENT))
@pytest.mark.parametrize("service", ["resend", "stream"])
def test_transient_faults_are_retried_within_the_call(
    service: str, fault: str, pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    knobs = TRANSIENT[fault]
    base: type[FaultSettings] = ResendSettings if service == "resend" else StreamSettings
    seed = burst_seed(base(**knobs), service, attempts=CLIENT["max_attempts"])
    emulators.control.update_config({"seed": seed, service: knobs})
    if service == "resend":
        queue: Any = run_async(seed_emails(pg_url, "transient", valid=40, invalid=2))
        job = fast_job(email_task.TASK, email_task.send_due_emails, retries=0)
        # The first (slow) send stays in flight until the client's retry has met it there.
        slow = "slow_rate" in knobs
        with held_until_met_in_flight(emulators) if slow else nullcontext():
            result = run_in_process(job, pg_url, emulators, EMAIL_OP, EMAIL_CONFIG, resend=CLIENT)
        audit = run_async(audit_emails(pg_url, emulators.resend, queue))
    else:
        queue = run_async(seed_videos(pg_url, emulators.stream, "transient"))
        job = fast_job(video_task.TASK, video_task.check_queued_videos, retries=0)
        result = run_in_process(job, pg_url, emulators, VIDEO_OP, VIDEO_CONFIG, stream=CLIENT)
        audit = run_async(audit_videos(pg_url, queue))
    served = statuses(emulators, SERVICE[service])
    outcome.add_audit(
        "api",
        f"{fault}, seeded bursts ({service})",
        runs=1,
        audit=audit,
    )
    # One attempt of the op: the client's retries absorbed every burst within the task's timeout.
    assert result.success, failure_of(result, EMAIL_OP if service == "resend" else VIDEO_OP)
    assert retries_of(result) == 0
    assert audit.ok(), audit.explain()
    # The faults did happen (the first request of the run is always hit by construction).
    if "error_rate" in knobs:
        assert sum(served[s] for s in knobs["error_statuses"]) >= 2
    if "reset_rate" in knobs:
        assert served[0] >= 2  # the emulator's status for a dropped connection
    if "slow_rate" in knobs and service == "resend":
        # The retry met the first send still in flight: 409, then the cached answer.
        assert served[409] >= 1
        outcome.add_audit(
            "api",
            "Resend 409 concurrent_idempotent_requests (retry while the first send is in flight)",
            runs=1,
            audit=audit,
        )


def test_a_429_storm_from_a_neighbour_sharing_resends_limit(
    pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    """Another client on the same key eats the budget: our requests meet 429 + retry-after. Each
    is waited out (the answer says how long) or, past the client's attempts, the run stops early,
    gives its rows back and succeeds; the next tick finishes. Never a row lost or sent twice."""
    queue = run_async(seed_emails(pg_url, "storm", valid=60))
    emulators.resend.configure(rate_limit_requests=4, rate_limit_window_s=1.0)

    def batch_429s() -> int:
        return sum(
            c.count
            for c in emulators.control.counters()
            if c.endpoint == "POST /emails/batch" and c.status == 429
        )

    # The storm lasts until it has reached one of our requests (or our run is over), not for a
    # fixed 4 s that a slow start of the run on a loaded machine could miss entirely.
    over = threading.Event()
    stop = time.monotonic() + 60.0

    def neighbour() -> int:
        sent = 0
        with httpx.Client(base_url=emulators.resend_base_url, timeout=5) as http:
            while time.monotonic() < stop and not over.is_set() and not batch_429s():
                http.get("/emails/none", headers={"authorization": f"Bearer {RESEND_KEY}"})
                sent += 1
        return sent

    runs = 0
    with ThreadPoolExecutor(1) as pool:
        storm = pool.submit(neighbour)
        try:
            wait_for(
                "the storm to start", lambda: statuses(emulators, "resend")[429] > 0, timeout=30
            )
            result = run_in_process(email_task.job, pg_url, emulators, EMAIL_OP, EMAIL_CONFIG)
        finally:
            over.set()
        runs += 1
        assert storm.result() > 0
    first = metadata_of(result, EMAIL_OP)
    assert result.success and retries_of(result) == 0
    # The storm's answers reached our requests too.
    batch_429 = batch_429s()
    assert batch_429 >= 1
    stopped = first["stopped"]
    while stopped != "drained" and runs < 4:  # the next ticks, now the storm is over
        result = run_in_process(email_task.job, pg_url, emulators, EMAIL_OP, EMAIL_CONFIG)
        runs += 1
        assert result.success
        stopped = metadata_of(result, EMAIL_OP)["stopped"]
    audit = run_async(audit_emails(pg_url, emulators.resend, queue))
    outcome.add_audit(
        "api",
        "429 storm with retry-after (a neighbour on the same Resend key)",
        runs=runs,
        audit=audit,
    )
    assert audit.ok(), audit.explain()


def test_cloudflare_429_penalty_shorter_than_a_call_may_wait_is_waited_out(
    pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    """Over Stream's limit every call gets 429 for the penalty; a penalty of a second or two is
    slept through (retry-after) inside the call, and the run completes in its first attempt."""
    queue = run_async(seed_videos(pg_url, emulators.stream, "penalty"))
    emulators.stream.configure(
        rate_limit_requests=3, rate_limit_window_s=2.0, rate_limit_penalty_s=1.0
    )
    job = fast_job(video_task.TASK, video_task.check_queued_videos, retries=0)
    result = run_in_process(
        job, pg_url, emulators, VIDEO_OP, VIDEO_CONFIG, stream={"max_attempts": 6}
    )
    audit = run_async(audit_videos(pg_url, queue))
    outcome.add_audit(
        "api",
        "Cloudflare 429 storm, retry-after within the call's wait (stream)",
        runs=1,
        audit=audit,
    )
    assert result.success, failure_of(result, VIDEO_OP)
    assert retries_of(result) == 0
    assert statuses(emulators, "stream")[429] >= 2
    assert audit.ok(), audit.explain()


async def _breaker(url: str, service: str) -> dict[str, Any] | None:
    async def read(engine: Any) -> dict[str, Any] | None:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(CircuitBreaker.__table__).where(CircuitBreaker.service == service)
                )
            ).first()
        return dict(row._mapping) if row else None

    return await with_engine(url, read)


async def _time_passes(url: str, service: str) -> None:
    """The breaker's wait is over: what its clock would say five minutes later."""

    async def move(engine: Any) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                update(CircuitBreaker)
                .where(CircuitBreaker.service == service)
                .values(opened_until=datetime.now(UTC) - timedelta(seconds=1))
            )

    await with_engine(url, move)


def test_cloudflare_five_minute_penalty_opens_the_breaker_at_once(
    pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    """Cloudflare's real penalty (every call 429 for 300 s) is longer than a call may wait: the
    call gives up at once, the breaker opens for the whole penalty, the retry fails fast without a
    request, and no row is lost. Five minutes later (emulated) the next run completes."""
    queue = run_async(seed_videos(pg_url, emulators.stream, "penalty300"))
    emulators.stream.configure(
        rate_limit_requests=3, rate_limit_window_s=300.0, rate_limit_penalty_s=300.0
    )
    job = fast_job(video_task.TASK, video_task.check_queued_videos)
    # The run stops where the 429 hits (a listing page fails the attempt; a lookup leaves its
    # rows queued) and does not ask again: one 429 served, the breaker open for the penalty.
    run_in_process(job, pg_url, emulators, VIDEO_OP, VIDEO_CONFIG)
    served = statuses(emulators, "stream")
    assert served[429] == 1
    breaker = run_async(_breaker(pg_url, "cloudflare_stream"))
    assert breaker is not None and breaker["state"] == "open"
    assert breaker["opened_until"] >= datetime.now(UTC) + timedelta(seconds=280)
    rows = run_async(streaming_rows(pg_url))
    assert not [r for r in rows.values() if r["locked_by"] is not None]  # all given back
    calls = emulators.control.calls(service="stream")
    # The next tick, a minute later: fails fast without a request, naming the open circuit.
    result = run_in_process(job, pg_url, emulators, VIDEO_OP, VIDEO_CONFIG)
    assert not result.success
    assert retries_of(result) == 0
    assert "circuit open for cloudflare_stream" in failure_of(result, VIDEO_OP)
    assert emulators.control.calls(service="stream") == calls

    # Five minutes later (the emulator's clock and the breaker's), with the token's budget back:
    # the tiny limit stood for a budget other jobs had spent.
    emulators.control.advance_clock(301)
    run_async(_time_passes(pg_url, "cloudflare_stream"))
    emulators.stream.configure(rate_limit_requests=1200)
    result = run_in_process(job, pg_url, emulators, VIDEO_OP, VIDEO_CONFIG)
    audit = run_async(audit_videos(pg_url, queue))
    outcome.add_audit(
        "api",
        "Cloudflare 429 with its real 300 s retry-after: breaker opens at once (stream)",
        runs=3,
        audit=audit,
    )
    assert result.success, failure_of(result, VIDEO_OP)
    assert audit.ok(), audit.explain()


@pytest.mark.parametrize("service", ["resend", "stream"])
def test_a_sustained_outage_opens_the_breaker_and_a_probe_closes_it(
    service: str, pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    threshold = 3
    # A cool-down no run here outlasts, however slow the machine: the second run must find the
    # breaker still open. Its end is then moved into the past (the breaker's clock), not waited.
    breaker: dict[str, Any] = {"breaker_failure_threshold": threshold, "breaker_cool_down_s": 300}
    emulators.control.update_config(
        {service: {"error_rate": 1.0, "error_statuses": [503], "fault_after_processing_share": 0}}
    )
    if service == "resend":
        queue: Any = run_async(seed_emails(pg_url, "outage", valid=40))
        config = {**EMAIL_CONFIG, "batch_size": 5}
        job = email_task.job  # its breaker failure is Failure(allow_retries=False): no retry wait
        op, name = EMAIL_OP, "resend"
        overrides: dict[str, Any] = {"resend": breaker}
    else:
        queue = run_async(seed_videos(pg_url, emulators.stream, "outage"))
        config = VIDEO_CONFIG
        job = fast_job(video_task.TASK, video_task.check_queued_videos)
        op, name = VIDEO_OP, "cloudflare_stream"
        overrides = {"stream": breaker}

    first = run_in_process(job, pg_url, emulators, op, config, **overrides)
    calls = emulators.control.calls(service=SERVICE[service])
    assert not first.success
    # Three calls failed three attempts each, then the breaker stopped the fourth: no more.
    assert calls == threshold * 3
    assert f"circuit open for {name}" in failure_of(first, op)
    state = run_async(_breaker(pg_url, name))
    assert state is not None and state["state"] == "open"

    second = run_in_process(job, pg_url, emulators, op, config, **overrides)
    assert not second.success
    assert emulators.control.calls(service=SERVICE[service]) == calls  # failed fast, no request

    emulators.control.update_config({service: {"error_rate": 0.0}})
    run_async(_time_passes(pg_url, name))  # the cool-down is over
    state = run_async(_breaker(pg_url, name))
    assert state is not None and state["opened_until"] < datetime.now(UTC)
    third = run_in_process(job, pg_url, emulators, op, config, **overrides)
    assert third.success, failure_of(third, op)
    state = run_async(_breaker(pg_url, name))
    assert state is not None and state["state"] == "closed"
    audit = run_async(audit_queue(pg_url, emulators, queue))
    outcome.add_audit(
        "api",
        f"sustained 503 outage: breaker opens, fails fast, probe closes it ({service})",
        runs=3,
        audit=audit,
    )
    assert audit.ok(), audit.explain()


def _evaluate_failure_sensor(
    instance: DagsterInstance, run: DagsterRun, resources: dict[str, Any]
) -> None:
    """What the daemon does with a failed run: hand it to the failure sensor."""
    [record] = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_FAILURE
    ).records
    event = record.event_log_entry.dagster_event
    assert event is not None
    context = build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
        resources=resources,
    )
    alert_on_run_failure(context.for_run_failure())


async def _alert_emails(url: str) -> list[dict[str, Any]]:
    async def read(engine: Any) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            result = await conn.execute(
                select(EmailQueue.__table__).where(EmailQueue.to_address == "oncall@alianza.test")
            )
            return [dict(r._mapping) for r in result]

    return await with_engine(url, read)


WEBHOOK = "https://hooks.example.test/services/T000/B000/reliability"


@pytest.mark.parametrize("service", ["resend", "stream"])
def test_auth_revoked_mid_run_fails_once_clearly_and_alerts(
    service: str, pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    instance = DagsterInstance.get()
    # The run's third request is held in flight until the credential has been revoked: the
    # revocation lands mid-run however fast or slow the machine runs the rest.
    emulators.control.update_config({service: {"latency_ms": 150, "hold_requests": [3]}})
    if service == "resend":
        queue: Any = run_async(seed_emails(pg_url, "revoked", valid=60))
        job, op, config = email_task.job, EMAIL_OP, {**EMAIL_CONFIG, "batch_size": 5}
        revoke = {"revoke_key": RESEND_KEY}
        rotated: dict[str, Any] = {"resend": {"api_key": "re_rotated_key_0002"}}
    else:
        queue = run_async(seed_videos(pg_url, emulators.stream, "revoked"))
        job, op, config = video_task.job, VIDEO_OP, VIDEO_CONFIG
        revoke = {"revoke_token": STREAM_TOKEN}
        rotated = {"stream": {"api_token": "cf-rotated-token-0002"}}

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_in_process, job, pg_url, emulators, op, config, instance=instance)
        wait_for(
            "the run to be under way",
            lambda: emulators.control.calls(service=SERVICE[service]) >= 2,
            timeout=30,
        )
        emulators.control.update_config({service: revoke})
        emulators.control.update_config({service: {"hold_requests": []}})
        result = running.result(timeout=120)

    assert not result.success
    assert retries_of(result) == 0  # fails once: retrying cannot fix a revoked credential
    message = failure_of(result, op)
    expected = "HTTP 403 invalid_api_key" if service == "resend" else "HTTP 401 unauthorized"
    assert expected in message, message
    assert RESEND_KEY not in message and STREAM_TOKEN not in message
    done_before = _settled(run_async(_rows(pg_url, service)))
    assert 0 < done_before < queue.items - 2  # it was stopped mid-run, not before or after
    rows = run_async(_rows(pg_url, service))
    assert not [r for r in rows.values() if r["locked_by"] is not None]
    if service == "resend":
        # Not the rows' fault: no attempt counted, nothing dead.
        assert {r["status"] for r in rows.values()} <= {"sent", "pending"}
        assert {r["attempts"] for r in rows.values()} == {0}

    app = AppConfig(
        email_from="jobs@alianza.test",
        alert_email_to=["oncall@alianza.test"],
        alert_webhook_url=WEBHOOK,
    )
    with respx.mock(assert_all_called=True) as mock:
        hook = mock.post(WEBHOOK).mock(return_value=httpx.Response(200, text="ok"))
        _evaluate_failure_sensor(
            instance, result.dagster_run, {"database": Database(url=pg_url), "app": app}
        )
    [alert] = run_async(_alert_emails(pg_url))
    assert alert["subject"].startswith(f"[alianza-jobs] {job.name} failed")
    assert expected in alert["text"]
    assert RESEND_KEY not in alert["text"] and STREAM_TOKEN not in alert["text"]
    assert hook.call_count == 1

    # The operator rotates the credential; the next run finishes the work.
    finish = run_in_process(job, pg_url, emulators, op, config, **rotated)
    assert finish.success, failure_of(finish, op)
    # (The alert itself went out through the queue as well, once.)
    audit = run_async(audit_queue(pg_url, emulators, queue))
    outcome.add_audit(
        "api",
        f"auth revoked mid-run ({expected.split()[1]}): fails once, alerts ({service})",
        runs=2,
        audit=audit,
    )
    assert audit.ok(), audit.explain()


async def _rows(url: str, service: str) -> dict[int, dict[str, Any]]:
    return await (email_rows(url) if service == "resend" else streaming_rows(url))


def _settled(rows: dict[int, dict[str, Any]]) -> int:
    return sum(1 for r in rows.values() if r["status"] in ("sent", "ready", "error"))


def test_the_burst_seeds_really_are_bursts() -> None:
    """The helper the transient tests rely on: first request hit, no burst reaching 3."""
    settings = ResendSettings(error_rate=0.4)
    seed = burst_seed(settings, "resend", attempts=3)
    pattern = [faulty(settings, seed, "resend", q) for q in range(1, 81)]
    assert pattern[:2] == [True, True]
    assert "TTT" not in "".join("T" if p else "." for p in pattern)
