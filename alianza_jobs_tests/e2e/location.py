"""The e2e suite's own code location, loaded beside ``alianza_jobs.definitions``.

* ``slow_tick`` (``* * * * *``): holds its run open until the test drops a release file, so the
  next tick falls while it runs. Its op also refuses to run alongside another run of itself (an
  exclusive marker file), which turns "two runs at once" into a failed run the test sees.
* ``process_email_queue``, the real task module, *only while the real code location does not have
  it yet* (tasks are being wired into ``definitions.py`` one by one). Once it is there, the suite
  uses the real location's job and this location adds nothing.

Files go under ``ALIANZA_E2E_STATE_DIR`` (:mod:`alianza_jobs_tests.e2e.state`).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

from dagster import Definitions, JobDefinition, OpExecutionContext

from alianza_jobs import definitions as real
from alianza_jobs.platform.task import TaskReport, TaskSpec
from alianza_jobs.resources import build_resources
from alianza_jobs_tests.e2e.state import state_dir

SLOW_TICK = TaskSpec(
    name="slow_tick",
    description="Holds its run open until the e2e test releases it (overlap test).",
    cron="* * * * *",
    # Long enough to outlive the suite's other tests; the test releases it well before.
    timeout=timedelta(minutes=8),
)
RELEASE_FILE = "slow_tick.release"
INSIDE_FILE = "slow_tick.inside"
EVENTS_FILE = "slow_tick.events"


def _event(line: str) -> None:
    with (state_dir() / EVENTS_FILE).open("a") as fh:
        fh.write(f"{time.time():.3f} {line}\n")


@SLOW_TICK.op
async def hold_until_released(context: OpExecutionContext) -> TaskReport:
    inside = state_dir() / INSIDE_FILE
    try:
        # O_EXCL: exactly one run can hold the marker; a second one at the same time fails here.
        fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        _event(f"overlap {context.run_id}")
        raise RuntimeError(
            f"another run of slow_tick is inside ({inside.read_text()}): runs overlapped"
        ) from None
    os.write(fd, context.run_id.encode())
    os.close(fd)
    _event(f"start {context.run_id}")
    try:
        while not (state_dir() / RELEASE_FILE).exists():
            await asyncio.sleep(0.2)  # the op's own wait for the test; the timeout bounds it
    finally:
        inside.unlink(missing_ok=True)
        _event(f"end {context.run_id}")
    return TaskReport(counts={"held": 1})


slow_tick_job = SLOW_TICK.job(hold_until_released)

_real_jobs = {job.name for job in real.defs.jobs or []}
_jobs: list[JobDefinition] = [slow_tick_job]
if "process_email_queue" not in _real_jobs:
    from alianza_jobs.defs.emails import process_email_queue

    _jobs.append(process_email_queue.job)

slow_tick_schedule = SLOW_TICK.schedule(slow_tick_job, real.settings)
assert slow_tick_schedule is not None

defs = Definitions(
    jobs=_jobs,
    schedules=[slow_tick_schedule],
    resources=build_resources(real.settings),
)
