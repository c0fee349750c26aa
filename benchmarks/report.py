"""``latest.md``: the results as tables (medians over repetitions, ratios, targets)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METHOD = """\
How to read this. Each number is the median over the repetitions (min-max in brackets where it
matters) of runs that succeeded *and* left the database and the emulator in the right end state.
Each run is a child process on a fresh copy of the same generated data, our job
(`execute_in_process` of the real job, `ALIANZA_ENV=prod` settings pointing at the emulators on a
loopback socket) alternating with the TypeScript package's loop (`benchmarks/baseline.py`). *Wall* is the job
run itself (Dagster's run machinery included for ours; interpreter start-up and imports excluded
for both, see *code location* for those); *op* is our op alone, inside that run. *Rows/s* = rows drained / wall. *API calls* are the
requests the emulator served (429s included). *Peak RSS* is the child's own (`VmHWM`). The
*ratio* is our rows/s over the baseline's rows/s on the same backend and schema; the baseline runs at the
smaller size the issue gives it (its throughput is per row and does not improve with size).
*Others* is how many cores processes outside the run used meanwhile (the machine is shared).
*Schema* is the platform schema the run's data was in: `default`, the jobs' local stand-in for the
platform's tables; `drizzle`, the tables the platform's Drizzle ORM makes (uuid ids, enum
statuses, text durations, the email queue's `to`/`from`/`error`), read through its schema map by
our job and the baseline alike (Postgres only). Ratios compare runs on the same schema.
"""


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _range(summary: Mapping[str, Any], metric: str, digits: int = 2) -> str:
    med = summary["median"].get(metric)
    if med is None:
        return "-"
    lo, hi = summary["min"].get(metric), summary["max"].get(metric)
    if summary["ok"] > 1 and lo != hi:
        return f"{_num(med, digits)} ({_num(lo, digits)}-{_num(hi, digits)})"
    return _num(med, digits)


def _workload_table(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| backend | schema | run | size | ok | wall s | op s | rows/s | API calls | calls/row "
        "| 429s | peak RSS MB | ratio | others (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        ratio = s.get("ratio_to_baseline")
        ratio_text = f"{ratio:,.1f}x" if ratio is not None else "-"
        if ratio is not None and s.get("baseline_size") not in (None, s["size"]):
            ratio_text += f" (vs baseline @ {s['baseline_size']:,})"
        med = s["median"]
        lines.append(
            f"| {s['backend']} | {_schema(s)} | {s['case']} | {_num(s['size'])} "
            f"| {s['ok']}/{s['runs']} "
            f"| {_range(s, 'wall_s', 3)} | {_num(med.get('op_s'), 3)} "
            f"| {_num(med.get('rows_per_s'), 1)} "
            f"| {_num(med.get('api_calls'), 0)} | {_num(med.get('api_calls_per_row'), 4)} "
            f"| {_num(med.get('rate_limited'), 0)} | {_range(s, 'peak_rss_mb', 0)} "
            f"| {ratio_text} | {_num(med.get('foreign_cores'))} |"
        )
    errors = [(s, e) for s in summaries for e in s["errors"]]
    for s, error in errors:
        lines.append("")
        lines.append(
            f"- {s['backend']} ({_schema(s)} schema) {s['case']} @ {_num(s['size'])}: "
            f"**failed**: {error}"
        )
    return lines


def _schema(summary: Mapping[str, Any]) -> str:
    """The platform schema a figure came from (results from before it was recorded: default)."""
    return str(summary.get("schema", "default"))


def _code_location_table(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| backend | what | ok | wall s | whole process s | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['backend']} | `{s['case']}` | {s['ok']}/{s['runs']} | {_range(s, 'wall_s', 3)} "
            f"| {_range(s, 'process_s', 3)} | {_range(s, 'peak_rss_mb', 0)} |"
        )
    for s in summaries:
        for error in s["errors"]:
            lines += ["", f"- {s['backend']} {s['case']}: **failed**: {error}"]
    return lines


def _runs_by_job(summary: Mapping[str, Any]) -> str:
    runs = summary.get("runs_by_job")
    if runs is None:
        return "-"
    return ", ".join(f"{job} {_num(n, 1)}" for job, n in runs.items()) or "none"


def _idle_table(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| backend | deployment | ok | window s | CPU s | cores | vs cron | runs launched "
        "| runs by job | others (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in summaries:
        med = s["median"]
        ratio = s.get("cpu_ratio_to_cron")
        lines.append(
            f"| {s['backend']} | {s['case']} | {s['ok']}/{s['runs']} "
            f"| {_num(med.get('window_s'), 0)} | {_range(s, 'cpu_s', 1)} "
            f"| {_range(s, 'cores', 3)} | {f'{ratio:.2f}x' if ratio is not None else '-'} "
            f"| {_num(med.get('runs'), 0)} | {_runs_by_job(s)} | {_num(med.get('foreign_cores'))} |"
        )
    for s in summaries:
        for error in s["errors"]:
            lines += ["", f"- {s['backend']} {s['case']}: **failed**: {error}"]
    return lines


def _latency_table(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| backend | deployment | what | ok | items | p50 s | p95 s | max s | budget s "
        "| not done | others (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        med = s["median"]
        mode, _, what = str(s["case"]).partition(": ")
        lines.append(
            f"| {s['backend']} | {mode} | {what} | {s['ok']}/{s['runs']} "
            f"| {_num(med.get('samples'), 0)} | {_range(s, 'p50_s', 1)} "
            f"| {_range(s, 'p95_s', 1)} | {_range(s, 'max_s', 1)} "
            f"| {_num(med.get('budget_s'), 0)} | {_num(med.get('not_done'), 0)} "
            f"| {_num(med.get('foreign_cores'))} |"
        )
    for s in summaries:
        for error in s["errors"]:
            lines += ["", f"- {s['backend']} {s['case']}: **failed**: {error}"]
    return lines


def _flood_table(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| backend | ok | deliveries | requests | s | p50 ms | p95 ms | p99 ms | max ms "
        "| peak RSS MB | lost or refused | apply runs | others (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(s: Mapping[str, Any], key: str) -> str:
        value = s["median"].get(key)
        return "-" if value is None else f"{value * 1000:.1f}"

    for s in summaries:
        med = s["median"]
        lines.append(
            f"| {s['backend']} | {s['ok']}/{s['runs']} | {s['size']:,} "
            f"| {_num(med.get('samples'), 0)} | {_num(med.get('window_s'), 1)} "
            f"| {ms(s, 'p50_s')} | {ms(s, 'p95_s')} | {ms(s, 'p99_s')} | {ms(s, 'max_s')} "
            f"| {_num(med.get('peak_rss_mb'), 0)} | {_num(med.get('not_done'), 0)} "
            f"| {_num(med.get('runs'), 0)} | {_num(med.get('foreign_cores'))} |"
        )
    for s in summaries:
        for error in s["errors"]:
            lines += ["", f"- {s['backend']} {s['case']}: **failed**: {error}"]
    return lines


def render(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    load = results["load"]
    lines = [
        f"# Alianza Jobs benchmarks ({'smoke' if results['smoke'] else 'full run'})",
        "",
        f"Generated {results['generated_at']} by `{results['command']}`: "
        f"{results['repeat']} repetition(s), backends {', '.join(results['backends'])}, "
        f"platform schemas {', '.join(results.get('schemas', ['default']))}, "
        f"{results['duration_s']:,.0f} s in all.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu_model']}, {machine['cores']} cores |",
        f"| RAM | {machine['ram_gb']} GB |",
        f"| OS | {machine['os']} |",
        f"| Python | {machine['python']} |",
        f"| Dagster | {machine['dagster']} |",
        f"| SQLAlchemy | {machine['sqlalchemy']} |",
        f"| Postgres | {machine['postgres'] or 'not available'} |",
        f"| SQLite | {machine['sqlite']} |",
        f"| load (1 min) | {load['start']} at the start, {load['end']} at the end; "
        f"at the start of the runs: median {load['runs_median']}, max {load['runs_max']} |",
        f"| others' CPU during runs | median {load['foreign_median']} cores, "
        f"max {load['foreign_max']} |",
        "",
        METHOD,
    ]
    by_workload: dict[str, list[Mapping[str, Any]]] = {}
    for s in results["summaries"]:
        by_workload.setdefault(s["workload"], []).append(s)
    for name, info in results["workloads"].items():
        summaries = by_workload.get(name, [])
        lines += ["", f"## {info['title']}", ""]
        if info.get("data"):
            lines += [info["data"], ""]
        if info.get("emulator"):
            lines += [f"Emulator: {info['emulator']}.", ""]
        if name == "code_location":
            lines += _code_location_table(summaries)
        elif name == "idle":
            lines += _idle_table(summaries)
        elif name == "latency":
            lines += _latency_table(summaries)
        elif name == "webhook_flood":
            lines += _flood_table(summaries)
        else:
            lines += _workload_table(summaries)
    lines += [
        "",
        "## Targets",
        "",
        "| target | backend | schema | value | wanted | met |",
        "|---|---|---|---:|---:|---|",
    ]
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        unit = f" {t['unit']}" if t["unit"] else ""
        note = f" ({t['note']})" if t["note"] else ""
        digits = 4 if not t["unit"] else (1 if t["unit"] in ("x", "MB", "s") else 0)
        lines.append(
            f"| {t['name']}{note} | {t['backend']} | {_schema(t)} "
            f"| {_num(t['value'], digits)}{unit} "
            f"| {t['comparison']} {_num(t['threshold'], digits)}{unit} | {met} |"
        )
    if results["smoke"]:
        lines += ["", "Smoke sizes are tiny: the targets above are shown, not meant to be met."]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.report [latest.json]``: render its ``latest.md`` again."""
    args = list(sys.argv[1:] if argv is None else argv)
    source = Path(args[0]) if args else Path(__file__).parent / "results" / "latest.json"
    source.with_name("latest.md").write_text(render(json.loads(source.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
