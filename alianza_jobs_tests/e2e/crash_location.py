"""A code location holding one job, ``crash_victim``, for the harshest daemon crash test.

The test kills the run's process together with the daemon and the code server that launched it (as
a machine reboot or a cgroup kill would). Alone in its location, that code server serves nothing
else, so the kill touches no other test's run. The run records its process id and waits; its retry
(a run with ``dagster/parent_run_id``) succeeds at once.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from dagster import Definitions, OpExecutionContext

from alianza_jobs.platform.task import TaskReport, TaskSpec
from alianza_jobs_tests.e2e.state import state_dir

CRASH_VICTIM = TaskSpec(
    name="crash_victim",
    description="Waits to be killed with its code server (daemon crash test); its retry succeeds.",
    # The test kills the run within a second of its recording its pid; were it not killed, the
    # timeout would fail it (not the way the test expects, so the test would show it).
    timeout=timedelta(seconds=15),
)


def victim_pid_name(run_id: str) -> str:
    return f"crash_victim.{run_id}.pid"


@CRASH_VICTIM.op
async def wait_to_be_killed(context: OpExecutionContext) -> TaskReport:
    if "dagster/parent_run_id" in context.run.tags:
        return TaskReport(counts={"processed": 1})  # the run retry: nothing left to prove
    (state_dir() / victim_pid_name(context.run_id)).write_text(str(os.getpid()))
    await asyncio.sleep(3600)  # killed long before; the 15 s timeout would otherwise end it
    return TaskReport()


crash_victim_job = CRASH_VICTIM.job(wait_to_be_killed)

defs = Definitions(jobs=[crash_victim_job])
