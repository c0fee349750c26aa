"""What each reliability test tried and what came of it, kept in ``results.json``.

A row is one fault tried: how many runs of a job it took, how many queued items were at stake, how
many of them were *lost* (not in their one correct state at the end: stuck in ``sending``, still
leased, never delivered, settled wrongly) and how many were *duplicated* (an email delivered more
than once, an item dead-lettered twice). Rows are stored per test, so running one file refreshes
that file's rows and keeps the others'.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# An artifact of the last run (git-ignored, like the e2e screenshots): the table generated from it,
# docs/reliability.md, is what is committed, so running the suite leaves the tree clean.
REPO = Path(__file__).resolve().parents[2]
RESULTS_FILE = REPO / "test-artifacts" / "reliability" / "results.json"

# The eight areas, in its order: the table lists them so.
SECTIONS: dict[str, str] = {
    "api": "1. API faults",
    "crash": "2. Crashes",
    "database": "3. Database faults",
    "concurrency": "4. Concurrency",
    "timeouts": "5. Timeouts",
    "input": "6. Hostile and bad input",
    "secrets": "7. Secrets",
    "properties": "8. Properties",
}


@dataclass
class Row:
    section: str
    """A key of :data:`SECTIONS`."""
    fault: str
    runs: int = 0
    items: int = 0
    lost: int = 0
    duplicated: int = 0

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"unknown section {self.section!r}; one of {sorted(SECTIONS)}")


@dataclass
class TestResult:
    outcome: str
    """passed, failed, skipped (the call phase's, or the setup's when setup failed)."""
    duration_s: float
    rows: list[Row] = field(default_factory=list)


def load(path: Path = RESULTS_FILE) -> dict[str, TestResult]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    tests: dict[str, TestResult] = {}
    for node, entry in data.get("tests", {}).items():
        tests[node] = TestResult(
            outcome=str(entry["outcome"]),
            duration_s=float(entry["duration_s"]),
            rows=[Row(**row) for row in entry.get("rows", [])],
        )
    return tests


def save(
    fresh: Mapping[str, TestResult],
    *,
    collected: Iterable[str] = (),
    path: Path = RESULTS_FILE,
    wall_time_s: float | None = None,
) -> dict[str, TestResult]:
    """Merge this session's tests into the file: a test run again replaces its old entry; a test
    gone from a file this session collected, or whose file is gone, is dropped."""
    seen = set(collected) | set(fresh)
    files = {node.split("::", 1)[0] for node in seen}
    root = path.parents[2]
    merged = {
        node: result
        for node, result in load(path).items()
        if node.split("::", 1)[0] not in files and (root / node.split("::", 1)[0]).exists()
    }
    merged.update(fresh)
    session = {"tests": len(fresh), "wall_time_s": wall_time_s}
    # The suite's own files, by node id: the results live elsewhere (test-artifacts/), so globbing
    # beside them found none, and every session, one file's too, passed for a whole-suite run.
    here = Path(__file__).resolve().parent
    suite = {f"{here.relative_to(REPO)}/{p.name}" for p in here.glob("test_*.py")}
    previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    whole = session if suite <= files else previous.get("last_full_session")
    payload: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "last_session": session,
        "last_full_session": whole,
        "tests": {
            node: {**asdict(result), "rows": [asdict(r) for r in result.rows]}
            for node, result in sorted(merged.items())
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return merged


@dataclass
class Aggregate:
    section: str
    fault: str
    runs: int = 0
    items: int = 0
    lost: int = 0
    duplicated: int = 0
    tests: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    """Tests marked xfail: a known, described bug (lost items there are expected)."""


def aggregate(tests: Mapping[str, TestResult]) -> list[Aggregate]:
    """One line per (section, fault), summed over the tests (and seeds) that tried it."""
    lines: dict[tuple[str, str], Aggregate] = {}
    for node, result in tests.items():
        for row in result.rows:
            line = lines.setdefault((row.section, row.fault), Aggregate(row.section, row.fault))
            line.runs += row.runs
            line.items += row.items
            line.lost += row.lost
            line.duplicated += row.duplicated
            line.tests.add(node)
            if result.outcome == "xfailed":
                line.known.add(node)
            elif result.outcome != "passed":
                line.failed.add(node)
    order = list(SECTIONS)
    return sorted(lines.values(), key=lambda a: (order.index(a.section), a.fault))


def totals(lines: Iterable[Aggregate]) -> Aggregate:
    total = Aggregate("", "Total")
    for line in lines:
        total.runs += line.runs
        total.items += line.items
        total.lost += line.lost
        total.duplicated += line.duplicated
        total.tests |= line.tests
        total.failed |= line.failed
        total.known |= line.known
    return total
