"""The trigger benchmarks still run: ``python -m benchmarks --smoke --only idle --only latency``,
and ``--only webhook_flood``.

Whole deployments (``dagster dev`` with ``ALIANZA_EVENT_TRIGGERS=false``, and ``scripts/dev``) on
scratch homes: ``idle`` runs the two side by side over a short window, ``latency`` each in turn
while emails and videos arrive. No timing is asserted (smoke windows are tiny and the machine is
shared): what must hold is that every measurement succeeded and the JSON has every figure the
report is made of.

Slow (several minutes: four deployments start and stop, and the cron one waits for its video
tick), hence ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alianza_jobs_tests.conftest import PG_ADMIN_URL, REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IDLE_CASES = {"cron", "events"}
LATENCY_CASES = {
    "events: email",
    "events: video, webhook came",
    "events: video, webhook never came",
    "cron: email",
    "cron: video",
}


def test_smoke_trigger_benchmarks_measure_both_deployments(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--only",
            "idle",
            "--only",
            "latency",
            "--backend",
            "sqlite",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=570,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((out / "latest.json").read_text())
    assert results["smoke"] is True and results["backends"] == ["sqlite"]
    assert set(results["workloads"]) == {"idle", "latency"}
    measurements = results["measurements"]
    assert measurements and all(m["success"] for m in measurements), [
        (m["workload"], m["case"], m["error"]) for m in measurements
    ]

    idle = {m["case"]: m for m in measurements if m["workload"] == "idle"}
    assert set(idle) == IDLE_CASES
    for m in idle.values():
        assert m["window_s"] > 0 and m["wall_s"] > 0, m
        assert m["cpu_s"] > 0 and m["cores"] > 0, m
        assert m["runs"] is not None and m["runs"] == sum(m["counters"]["runs_by_job"].values())
        assert m["counters"]["cpu_s_by_process"], m
    events_idle = next(
        s for s in results["summaries"] if s["workload"] == "idle" and s["case"] == "events"
    )
    assert events_idle["cpu_ratio_to_cron"] > 0

    latency = {m["case"]: m for m in measurements if m["workload"] == "latency"}
    assert set(latency) == LATENCY_CASES
    for m in latency.values():
        assert m["not_done"] == 0, m
        assert m["samples"] == len(m["counters"]["latencies_s"]), m
        # Half the events deployment's videos are picked to lose their webhook: no population
        # is empty, however few the videos.
        assert m["samples"] > 0, m
        assert 0 <= m["p50_s"] <= m["p95_s"] <= m["max_s"], m
        assert m["counters"]["runs_by_job"], m
    # The two video populations of the events deployment together are all its videos.
    events_videos = [m for c, m in latency.items() if c.startswith("events: video")]
    assert sum(m["samples"] for m in events_videos) == latency["cron: video"]["samples"]
    assert latency["cron: video"]["budget_s"] > 0
    assert latency["events: video, webhook never came"]["budget_s"] > 0

    names = {t["name"] for t in results["targets"]}
    assert {
        "idle: runs launched by events besides health_check (median per window)",
        "idle: events CPU vs cron CPU over the same window",
        "latency: email p95, events",
        "latency: video p95 when its webhook came, events",
        "latency: slowest video whose webhook never came, events",
    } <= names
    report = (out / "latest.md").read_text()
    assert "## Idle deployments" in report and "## Latency" in report
    assert "| sqlite | events |" in report and "| sqlite | cron | video |" in report


def test_smoke_webhook_flood_stores_everything_and_reports_its_figures(tmp_path: Path) -> None:
    """The receiver's flood benchmark, tiny: every delivery stored once, settled by a run or two,
    and every figure of its table present (on each backend there is)."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--only",
            "webhook_flood",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={**os.environ, "ALIANZA_BENCH_POSTGRES_URL": PG_ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "latest.json").read_text())
    [*measurements] = results["measurements"]
    assert measurements and all(m["success"] for m in measurements), measurements
    for m in measurements:
        assert m["not_done"] == 0 and 1 <= m["runs"] <= 3, m
        assert m["counters"]["stored"] == m["size"], m
        for figure in ("p50_s", "p95_s", "p99_s", "max_s", "peak_rss_mb", "cpu_s"):
            assert m[figure] is not None and m[figure] > 0, (figure, m)
