"""Dead letters: the manual job that puts dead items back into their queue."""

from __future__ import annotations

import dagster as dg

from alianza_jobs.defs.dead_letters import replay_dead_letters
from alianza_jobs.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    # Manual only: no schedule, whatever the environment.
    return dg.Definitions(jobs=[replay_dead_letters.job])
