"""Per-run metrics pushed to a real Pushgateway, grouped by job; a dead gateway never fails a task."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from alianza_jobs_tests.cli.helpers import run_cli
from alianza_jobs_tests.processes import free_port

M = ("-m", "alianza_jobs_tests.platform.defs")


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k not in {"instance"})): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("alianza_")
    }


def test_run_pushes_its_metrics(pushgateway: str) -> None:
    env = {"METRICS_ENABLED": "true", "PROMETHEUS_PUSHGATEWAY_URL": pushgateway}
    assert run_cli(*M, "run", "counts", env=env).returncode == 0
    assert run_cli(*M, "run", "flaky", env=env).returncode == 0

    samples = _samples(pushgateway)
    counts = {("job", "counts"), ("task", "counts"), ("env", "local")}
    assert samples[("alianza_task_items", frozenset(counts | {("counter", "processed")}))] == 3
    assert samples[("alianza_task_items", frozenset(counts | {("counter", "failed")}))] == 1
    assert samples[("alianza_task_last_outcome", frozenset(counts | {("outcome", "success")}))] == 1
    assert samples[("alianza_task_last_outcome", frozenset(counts | {("outcome", "failure")}))] == 0
    assert samples[("alianza_task_duration_seconds", frozenset(counts))] > 0
    flaky = {("job", "flaky"), ("task", "flaky"), ("env", "local")}
    # The last attempt of flaky was its third: two retries.
    assert samples[("alianza_task_attempt", frozenset(flaky))] == 3


def test_timeouts_are_pushed_as_such(pushgateway: str) -> None:
    env = {"METRICS_ENABLED": "true", "PROMETHEUS_PUSHGATEWAY_URL": pushgateway}
    assert run_cli(*M, "run", "hangs", env=env).returncode == 1
    samples = _samples(pushgateway)
    hangs = {("job", "hangs"), ("task", "hangs"), ("env", "local")}
    assert samples[("alianza_task_last_outcome", frozenset(hangs | {("outcome", "timeout")}))] == 1


def test_a_dead_pushgateway_is_one_warning_not_a_failure() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run_cli(
        *M, "run", "flaky", env={"METRICS_ENABLED": "true", "PROMETHEUS_PUSHGATEWAY_URL": dead}
    )
    assert proc.returncode == 0
    warnings = [
        line
        for line in proc.stderr.splitlines()
        if line.startswith("{") and "Could not push metrics" in line
    ]
    # Three attempts pushed (and failed) three times: warned once (as one JSON line on stderr).
    assert len(warnings) == 1
