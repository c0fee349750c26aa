"""From measurements to summaries: medians over repetitions, ratios to the baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.harness import median

METRICS = (
    "wall_s",
    "op_s",
    "process_s",
    "rows_per_s",
    "api_calls",
    "api_calls_per_row",
    "rate_limited",
    "peak_rss_mb",
    "cpu_s",
    "foreign_cores",
    "load1_start",
    # The trigger workloads (workloads/triggers.py): a deployment over a window.
    "window_s",
    "cores",
    "runs",
    "samples",
    "not_done",
    "p50_s",
    "p95_s",
    "p99_s",
    "max_s",
    "budget_s",
)


def summarize(measurements: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (workload, backend, platform schema, case, size), in the order first
    measured.

    Medians (and min/max) are over the successful runs only; ``ok``/``runs`` says how many there
    were. ``ratio_to_baseline``: our median rows per second over the baseline's, for the same
    workload, backend and platform schema (the baseline runs at its own, smaller size: its
    throughput does not grow with the queue, see the report). A measurement from before the
    platform schema was recorded is on the default one.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for m in measurements:
        key = (m["workload"], m["backend"], m.get("schema", "default"), m["case"], m["size"])
        groups.setdefault(key, []).append(m)
    summaries: list[dict[str, Any]] = []
    for (workload, backend, schema, case, size), runs in groups.items():
        ok = [r for r in runs if r["success"]]
        summary: dict[str, Any] = {
            "workload": workload,
            "backend": backend,
            "schema": schema,
            "case": case,
            "size": size,
            "runs": len(runs),
            "ok": len(ok),
            "errors": sorted({str(r["error"]) for r in runs if not r["success"]}),
            "median": {},
            "min": {},
            "max": {},
        }
        for metric in METRICS:
            values = [float(r[metric]) for r in ok if r.get(metric) is not None]
            if values:
                summary["median"][metric] = round(median(values) or 0.0, 5)
                summary["min"][metric] = round(min(values), 5)
                summary["max"][metric] = round(max(values), 5)
        by_job = [
            r["counters"]["runs_by_job"] for r in ok if "runs_by_job" in r.get("counters", {})
        ]
        if by_job:
            # Runs launched per job (trigger workloads): the median count, 0 where a job had none.
            jobs = sorted({job for runs in by_job for job in runs})
            summary["runs_by_job"] = {
                job: median([float(runs.get(job, 0)) for runs in by_job]) for job in jobs
            }
        summaries.append(summary)
    for summary in summaries:
        if summary["case"] != "ours":
            continue
        baseline = next(
            (
                s
                for s in summaries
                if s["workload"] == summary["workload"]
                and s["backend"] == summary["backend"]
                and s["schema"] == summary["schema"]
                and s["case"] == "baseline"
            ),
            None,
        )
        if baseline is None:
            continue
        ours_rate = summary["median"].get("rows_per_s")
        base_rate = baseline["median"].get("rows_per_s")
        summary["baseline_size"] = baseline["size"]
        if ours_rate and base_rate:
            summary["ratio_to_baseline"] = round(ours_rate / base_rate, 2)
    for summary in summaries:
        # The trigger workloads' deployments: event-driven ("events") against today's crons
        # ("cron"), side by side; the ratio of their median CPU over the same window.
        if summary["case"] != "events":
            continue
        cron = next(
            (
                s
                for s in summaries
                if s["workload"] == summary["workload"]
                and s["backend"] == summary["backend"]
                and s["schema"] == summary["schema"]
                and s["case"] == "cron"
            ),
            None,
        )
        events_cpu = summary["median"].get("cpu_s")
        cron_cpu = cron["median"].get("cpu_s") if cron else None
        if events_cpu is not None and cron_cpu:
            summary["cpu_ratio_to_cron"] = round(events_cpu / cron_cpu, 3)
    return summaries


def find(
    summaries: Sequence[Mapping[str, Any]], case: str, size: int | None = None
) -> Mapping[str, Any] | None:
    for summary in summaries:
        if summary["case"] == case and (size is None or summary["size"] == size):
            return summary
    return None


def largest_size(summaries: Sequence[Mapping[str, Any]], case: str) -> Mapping[str, Any] | None:
    of_case = [s for s in summaries if s["case"] == case and s["size"] is not None]
    return max(of_case, key=lambda s: s["size"]) if of_case else None


def smallest_size(summaries: Sequence[Mapping[str, Any]], case: str) -> Mapping[str, Any] | None:
    of_case = [s for s in summaries if s["case"] == case and s["size"] is not None]
    return min(of_case, key=lambda s: s["size"]) if of_case else None
