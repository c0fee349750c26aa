"""The benchmark suite still runs: ``python -m benchmarks --smoke --schema both`` end to end.

Tiny sizes, one repetition, both backends (Postgres skipped only when it is not there and not
required), every workload against the emulators on a loopback socket, the video and email queues
also on the Drizzle-made platform schema (Postgres), each run in a child process and checked for
the right end state. No timing is asserted: what must hold is that every run succeeded and the
JSON it writes has everything the report is made of, each figure saying which schema it is from.

Slow (about two minutes: some thirty child processes that each import Dagster), hence ``slow``;
it is the only way to know the benchmark code has not rotted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from alianza_jobs_tests.conftest import PG_ADMIN_URL, REPO, REQUIRE_POSTGRES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKLOADS = {"video_queue", "email_queue", "session_cleanup", "code_location"}
ON_DRIZZLE = {"video_queue", "email_queue"}


def _postgres_up() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def test_smoke_benchmark_runs_every_workload_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "ALIANZA_BENCH_POSTGRES_URL": PG_ADMIN_URL}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--schema", "both", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((out / "latest.json").read_text())
    backends = ["sqlite", "postgres"] if (REQUIRE_POSTGRES or _postgres_up()) else ["sqlite"]
    postgres = backends == ["sqlite", "postgres"]
    assert results["smoke"] is True and results["repeat"] == 1
    assert results["backends"] == backends
    assert results["schemas"] == (["default", "drizzle"] if postgres else ["default"])
    assert set(results["workloads"]) == WORKLOADS
    for key in ("cpu_model", "cores", "ram_gb", "os", "python", "dagster", "sqlalchemy"):
        assert results["machine"][key], key
    assert results["machine"]["postgres"] or backends == ["sqlite"]

    measurements = results["measurements"]
    assert measurements and all(m["success"] for m in measurements), [
        (m["workload"], m["backend"], m["case"], m["error"]) for m in measurements
    ]
    seen = {(m["workload"], m["backend"], m["schema"], m["case"]) for m in measurements}
    for backend in backends:
        for workload in WORKLOADS - {"code_location"}:
            for case in ("ours", "baseline"):
                assert (workload, backend, "default", case) in seen
        assert {
            ("code_location", backend, "default", c)
            for c in ("import alianza_jobs.definitions", "alianza-jobs run health_check")
        } <= seen
    # The Drizzle-made schema: Postgres only, and only the workloads that have a variant for it.
    on_drizzle = {(w, b, c) for w, b, s, c in seen if s == "drizzle"}
    want_drizzle = {(w, "postgres", c) for w in ON_DRIZZLE for c in ("ours", "baseline")}
    assert on_drizzle == (want_drizzle if postgres else set())

    by_case = {
        (m["workload"], m["backend"], m["schema"], m["case"], m["size"]): m for m in measurements
    }
    for (workload, _, _, case, size), m in by_case.items():
        assert m["wall_s"] > 0 and m["peak_rss_mb"] > 0
        if workload == "code_location":
            continue
        assert m["rows"] > 0 and m["rows_per_s"] > 0, m
        assert m["checks"], f"{workload} {case} @ {size}: end state not checked"
        if workload in ("video_queue", "email_queue"):
            assert m["api_calls"] > 0, m
        if case == "ours":
            assert m["op_s"] is not None and 0 < m["op_s"] <= m["wall_s"], m

    # The baseline loop makes one request per row; ours batches.
    for m in measurements:
        if m["workload"] == "video_queue" and m["case"] == "baseline":
            assert m["api_calls"] == m["rows"]
        if m["workload"] == "video_queue" and m["case"] == "ours":
            assert m["api_calls"] < m["rows"]

    ours = [s for s in results["summaries"] if s["case"] == "ours"]
    assert ours and all(s["ratio_to_baseline"] > 0 for s in ours)
    assert {t["backend"] for t in results["targets"]} == set(backends)
    assert {t["schema"] for t in results["targets"]} == set(results["schemas"])
    assert all({"name", "value", "threshold", "met"} <= set(t) for t in results["targets"])

    report = (out / "latest.md").read_text()
    for title in ("Video queue reconcile", "Email queue drain", "Session cleanup", "Code location"):
        assert f"## {title}" in report
    assert "## Targets" in report and "| CPU |" in report
    assert "| backend | schema | run |" in report and "| sqlite | default | ours |" in report
    if postgres:
        assert "| postgres | drizzle | ours |" in report
