"""``make dev`` as a newcomer runs it: a fresh ``DAGSTER_HOME``, the local database made and seeded,
then the receiver, the emulator's webhooks and ``dg dev``, until the daemon has loaded the code
location and evaluated its sensors. What it printed by then must hold no warning that is ours to
fix.

Dagster's own notices about a brand-new instance (the event-log consumer's "No cursor for event
type ..., ignoring older events") are Dagster's to word and say nothing is wrong; every other
warning fails the test with its line.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from alianza_jobs_tests.conftest import REPO
from alianza_jobs_tests.processes import free_port, wait_until_answers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

VENV = Path(sys.prefix)
STARTED = "Checking for new runs for sensor"  # the daemon has loaded the location and ticks
DAGSTERS_OWN = re.compile(r"dagster\.daemon\.EventLogConsumerDaemon .*No cursor for event type")
WARNING = re.compile(r"warning", re.IGNORECASE)


def _stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """The whole tree ``make dev`` started (some of Dagster's processes start sessions of their
    own, so the process group is not enough): SIGTERM, a grace period, then SIGKILL."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    running = [p for p in tree if p.is_running()]
    for process in running:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(running, timeout=30)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=30)


def test_make_dev_prints_no_warning_of_ours(tmp_path: Path) -> None:
    if not (VENV / "bin" / ".installed").exists():
        pytest.skip("make dev needs the venv `make install` made; this interpreter's is not one")
    home = tmp_path / "home"
    port, webhooks_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ALIANZA_", "DAGSTER_"))},
        "DAGSTER_HOME": str(home),
        "VENV": str(VENV),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEBHOOKS_PORT": str(webhooks_port),
    }
    log_path = tmp_path / "make-dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "dev"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_answers(
            f"http://127.0.0.1:{port}/server_info", proc, timeout_s=300, what="make dev"
        )
        deadline = time.monotonic() + 180
        while STARTED not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the daemon never evaluated a sensor"
            time.sleep(0.2)  # polling the log for a line, bounded by the deadline
        # What the start printed, before the stop: the test signals every process at once, and
        # Dagster's shutdown then narrates its own ordering (a supervisor that outlives its code
        # server warns that it is restarting it), which is not what a start prints.
        output = log_path.read_text(errors="replace")
    finally:
        _stop_tree(proc)

    ours = [
        line
        for line in output.splitlines()
        if WARNING.search(line) and not DAGSTERS_OWN.search(line)
    ]
    assert ours == [], "\n".join(ours)
    # The two a newcomer used to see, by their words, in case a rewording slips past the above.
    assert "SupersessionWarning" not in output
    assert "Found a dagster instance configuration" not in output
