"""The real code location, plus the fault hooks its environment arms (test-only wrapper).

    alianza-jobs -m alianza_jobs_tests.reliability.crashsite run process_email_queue

runs exactly ``alianza_jobs.definitions`` (same jobs, resources, schedules), with
:func:`~alianza_jobs_tests.reliability.hooks.install_from_env` armed first: a crash point, a
start barrier or the counting of statements and requests, as ``ALIANZA_TEST_*`` variables say.
"""

from __future__ import annotations

from alianza_jobs.definitions import defs
from alianza_jobs_tests.reliability.hooks import install_from_env

install_from_env()

__all__ = ["defs"]
