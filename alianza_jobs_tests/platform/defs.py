"""A code location of test-only tasks that exercise the runtime: timeouts, retries, redaction.

State that must be seen across processes (the CLI runs jobs in-process, tests read the result from
outside) goes to files under ``ALIANZA_TEST_STATE_DIR``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from dagster import AssetSpec, Backoff, Definitions, Jitter, OpExecutionContext

from alianza_jobs.logs import get_logger
from alianza_jobs.platform.freshness import with_freshness
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.settings import load_settings

FAST_RETRY = Retry(max_retries=2, delay=timedelta(seconds=0.1))


def state_file(name: str) -> Path:
    root = Path(os.environ.get("ALIANZA_TEST_STATE_DIR", ".alianza/test-state"))
    root.mkdir(parents=True, exist_ok=True)
    return root / name


def append(name: str, line: str) -> None:
    with state_file(name).open("a") as fh:
        fh.write(line + "\n")


def lines(name: str) -> list[str]:
    path = state_file(name)
    return path.read_text().splitlines() if path.exists() else []


@asynccontextmanager
async def claim(what: str) -> AsyncIterator[None]:
    """Stands in for a lease: what a cancelled attempt must give back."""
    append("claims", f"claimed {what}")
    try:
        yield
    finally:
        append("claims", f"released {what}")


HANGS = TaskSpec(
    name="hangs",
    description="Sleeps past its timeout on every attempt.",
    timeout=timedelta(seconds=0.5),
    retry=FAST_RETRY,
)


@HANGS.op
async def sleep_forever(context: OpExecutionContext) -> TaskReport:
    async with claim(f"attempt-{context.retry_number}"):
        await asyncio.sleep(3600)
    return TaskReport()


hangs_job = HANGS.job(sleep_forever)

FLAKY = TaskSpec(
    name="flaky",
    description="Fails twice, then succeeds.",
    cron="*/7 * * * *",
    timeout=timedelta(seconds=5),
    retry=Retry(
        max_retries=3,
        delay=timedelta(seconds=0.1),
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    ),
)


@FLAKY.op
async def fail_twice(context: OpExecutionContext) -> TaskReport:
    append(f"flaky-{context.run_id}", "attempt")
    if len(lines(f"flaky-{context.run_id}")) <= 2:
        raise RuntimeError("transient failure")
    return TaskReport(counts={"processed": 1, "succeeded": 1})


flaky_job = FLAKY.job(fail_twice)

COUNTS = TaskSpec(
    name="counts",
    description="Reports counters and materializes the demo table.",
    cron="*/7 * * * *",
    env_crons={"dev": "*/10 * * * *", "uat": "*/15 * * * *"},
    timeout=timedelta(seconds=5),
    assets=["demo_table"],
)


@COUNTS.op
async def count_items(context: OpExecutionContext) -> TaskReport:
    log = get_logger()
    for item_id in (1, 2, 3):
        log.child(item_id=item_id).info("Processed item")
    # "error" would collide with the summary line's own field: it is logged as count_error.
    return TaskReport(counts={"processed": 3, "succeeded": 2, "failed": 1, "error": 0})


counts_job = COUNTS.job(count_items)

LEAKY = TaskSpec(
    name="leaky",
    description="Logs and raises with secret values in them.",
    timeout=timedelta(seconds=5),
)


@LEAKY.op
async def leak_secrets(context: OpExecutionContext) -> TaskReport:
    token = os.environ["CLOUDFLARE_STREAM_API_TOKEN"]
    key = os.environ["RESEND_API_KEY"]
    get_logger().info(f"calling the API with token {token}", header=f"Bearer {key}")
    try:
        raise ConnectionError(f"connect failed for https://api.example.com?key={key}")
    except ConnectionError as exc:
        raise RuntimeError(f"giving up; Authorization: Bearer {token}") from exc


leaky_job = LEAKY.job(leak_secrets)

TOGGLE = TaskSpec(
    name="toggle",
    description="Fails while the state file `toggle-fail` exists.",
    timeout=timedelta(seconds=5),
)


@TOGGLE.op
async def fail_while_flagged(context: OpExecutionContext) -> TaskReport:
    if state_file("toggle-fail").exists():
        raise RuntimeError("upstream is down")
    return TaskReport(counts={"processed": 1})


toggle_job = TOGGLE.job(fail_while_flagged)

SPECS = [HANGS, FLAKY, COUNTS, LEAKY, TOGGLE]
settings = load_settings()
_jobs = [hangs_job, flaky_job, counts_job, leaky_job, toggle_job]

defs = Definitions(
    assets=[with_freshness(AssetSpec("demo_table"), COUNTS, settings)],
    jobs=_jobs,
    schedules=[
        spec.schedule(j, settings) for spec, j in zip(SPECS, _jobs, strict=True) if spec.cron
    ],
)
