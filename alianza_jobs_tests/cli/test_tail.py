"""``alianza-jobs tail``: reads the instance's storage; ``--follow`` sees new runs as they write."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from datetime import datetime
from typing import Any

from alianza_jobs_tests.cli.helpers import CLI, REPO, json_lines, run_cli
from alianza_jobs_tests.processes import stop_process

M = ("-m", "alianza_jobs_tests.platform.defs")


def test_tail_prints_a_finished_run_with_fields_and_filters() -> None:
    [result, _] = json_lines(run_cli(*M, "run", "counts", "--json").stdout)
    proc = run_cli("tail", "--run", result["run_id"], "--json")
    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc.stdout)
    processed = [line for line in lines if line["msg"] == "Processed item"]
    assert [line["item_id"] for line in processed] == ["1", "2", "3"]
    assert all(line["run_id"] == result["run_id"] and line["job"] == "counts" for line in lines)
    assert lines[-1]["msg"] == "Cron job execution completed"

    errors_only = json_lines(
        run_cli("tail", "--run", result["run_id"], "--json", "--level", "error").stdout
    )
    assert errors_only == []
    human = run_cli("tail", "--run", result["run_id"]).stdout
    assert "Processed item  task=counts item_id=2" in human


def test_tail_follow_picks_up_a_run_started_after_it() -> None:
    tail = subprocess.Popen(
        [*CLI, "tail", "--follow", "--json", "--interval", "0.1"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Launch the run only once tail is following, so the lag measured is tail's, not its start-up.
    assert tail.stderr is not None
    assert "tail: following" in tail.stderr.readline()
    arrivals: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()

    def read() -> None:
        assert tail.stdout is not None
        for raw in tail.stdout:
            arrivals.put((time.time(), json.loads(raw)))

    threading.Thread(target=read, daemon=True).start()
    try:
        [result, _] = json_lines(run_cli(*M, "run", "counts", "--json").stdout)
        seen: list[tuple[float, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                arrived, line = arrivals.get(timeout=0.5)
            except queue.Empty:
                continue
            if line["run_id"] == result["run_id"]:
                seen.append((arrived, line))
                if line["msg"] == "Cron job execution completed":
                    break
        messages = [line["msg"] for _, line in seen]
        assert messages[0] == "Starting counts"
        assert messages.count("Processed item") == 3
        assert messages[-1] == "Cron job execution completed"
        # In order, and each soon after it was written: tail polls every 0.1 s, and the bound
        # (10 s) leaves the margin a loaded 2-core machine needs to schedule both processes.
        stamps = [datetime.fromisoformat(line["ts"]).timestamp() for _, line in seen]
        assert stamps == sorted(stamps)
        lags = [arrived - stamp for (arrived, _), stamp in zip(seen, stamps, strict=True)]
        assert max(lags) < 10.0, lags
        assert all(line["task"] == "counts" for _, line in seen)
    finally:
        stop_process(tail)
