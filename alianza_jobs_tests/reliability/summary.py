"""Render the reliability suite's summary table from ``test-artifacts/reliability/results.json``.

    python -m alianza_jobs_tests.reliability.summary                  # print the markdown table
    python -m alianza_jobs_tests.reliability.summary --update docs/reliability.md

``--update`` replaces the table between the ``reliability-table`` markers of that file (anything
outside them is left alone). Exit 1 when a recorded test failed or lost or duplicated an item, so
CI can gate on the table as well as on pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alianza_jobs_tests.reliability.results import (
    RESULTS_FILE,
    SECTIONS,
    Aggregate,
    aggregate,
    load,
    totals,
)

START = "<!-- reliability-table:start -->"
END = "<!-- reliability-table:end -->"


def _status(line: Aggregate) -> str:
    if line.failed:
        return f"FAILED ({len(line.failed)}/{len(line.tests)})"
    if line.known:
        return f"known bug, xfail ({len(line.known)})"
    if line.lost or line.duplicated:
        return "FAILED"
    return "ok"


def render(results: Path = RESULTS_FILE) -> str:
    tests = load(results)
    lines = aggregate(tests)
    if not lines:
        return (
            "_No reliability results recorded yet: run `pytest alianza_jobs_tests/reliability`._\n"
        )
    header = [
        "| Area | Fault tried | Runs | Items | Lost | Duplicated | Tests | Result |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    body = [
        f"| {SECTIONS[line.section]} | {line.fault} | {line.runs} | {line.items} | "
        f"{line.lost} | {line.duplicated} | {len(line.tests)} | {_status(line)} |"
        for line in lines
    ]
    total = totals(lines)
    status = (
        f"FAILED ({len(total.failed)})"
        if total.failed
        else f"ok, {len(total.known)} known bug(s)"
        if total.known
        else "ok"
    )
    body.append(
        f"| **Total** | {len(lines)} faults | **{total.runs}** | **{total.items}** | "
        f"**{total.lost}** | **{total.duplicated}** | {len(total.tests)} | {status} |"
    )
    meta = json.loads(results.read_text(encoding="utf-8"))
    session = meta.get("last_full_session") or {}
    wall = session.get("wall_time_s")
    note = f"\n_Generated {meta.get('generated_at')} from `{results.name}`"
    if wall is not None:
        note += f"; the last run of the whole suite took {wall:.0f} s"
    note += "._\n"
    return "\n".join(header + body) + "\n" + note


def failed(results: Path = RESULTS_FILE) -> bool:
    """A test failed, or one that passed (not a known xfail) lost or duplicated an item."""
    lines = aggregate(load(results))
    return any(line.failed or ((line.lost or line.duplicated) and not line.known) for line in lines)


def update(document: Path, table: str) -> None:
    text = document.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{document}: no {START} ... {END} markers to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    document.write_text(f"{head}{START}\n{table}{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    parser.add_argument("--update", type=Path, help="markdown file whose table to replace")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results} does not exist: run the reliability suite first", file=sys.stderr)
        return 2
    table = render(args.results)
    if args.update:
        update(args.update, table)
    else:
        sys.stdout.write(table)
    return 1 if failed(args.results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
