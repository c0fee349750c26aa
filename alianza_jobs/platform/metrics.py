"""Per-run metrics: Dagster metadata always, a Prometheus Pushgateway when enabled.

The primary record is Dagster's own: the task wrapper writes duration, outcome and counters as op
output and materialization metadata, so the UI plots their history per asset. When
``METRICS_ENABLED=true`` the same figures are also pushed to a Prometheus Pushgateway, one group per
job, through ``prometheus_client``. A Pushgateway that is down never fails a task: the first failure
in a process is logged as a warning and later ones are silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from alianza_jobs.logs import get_logger
from alianza_jobs.settings import metrics_target

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from alianza_jobs.platform.task import TaskReport

PUSH_TIMEOUT_SECONDS = 3.0
_warned = False


def enabled() -> bool:
    return metrics_target().enabled


def record_task(
    task: str,
    attempt: int,
    outcome: str,
    duration_ms: float,
    report: TaskReport | None,
) -> None:
    if not enabled():
        return
    # Imported here: prometheus_client costs ~70 ms at import, paid only when metrics are on.
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    labels = {"task": task, "env": metrics_target().env}
    Gauge(
        "alianza_task_duration_seconds",
        "Wall time of the task's last attempt",
        list(labels),
        registry=registry,
    ).labels(**labels).set(duration_ms / 1000)
    outcome_gauge = Gauge(
        "alianza_task_last_outcome",
        "1 for the outcome of the task's last attempt, 0 for the others",
        [*labels, "outcome"],
        registry=registry,
    )
    for name in ("success", "failure", "timeout"):
        outcome_gauge.labels(**labels, outcome=name).set(1 if outcome == name else 0)
    Gauge(
        "alianza_task_attempt",
        "Attempt number of the task's last attempt (1 = first try; above 1 = retried)",
        list(labels),
        registry=registry,
    ).labels(**labels).set(attempt)
    if report is not None:
        items = Gauge(
            "alianza_task_items",
            "Items the task's last run counted, by counter (processed, succeeded, failed, ...)",
            [*labels, "counter"],
            registry=registry,
        )
        for counter, value in report.counts.items():
            items.labels(**labels, counter=counter).set(value)
        _extra_gauges(registry, labels, report.metadata)
    push(registry, job=task)


def _extra_gauges(
    registry: CollectorRegistry, labels: Mapping[str, str], metadata: Mapping[str, Any]
) -> None:
    from prometheus_client import Gauge

    def gauge(name: str, documentation: str, label: str) -> Gauge:
        """A gauge labelled like the task's own, plus ``label``."""
        return Gauge(name, documentation, [*labels, label], registry=registry)

    checks = metadata.get("health_checks")
    if isinstance(checks, Mapping):
        up = gauge("alianza_health_check_up", "1 if the check passed", "check")
        latency = gauge("alianza_health_check_latency_seconds", "Latency of the check", "check")
        for name, result in checks.items():
            up.labels(**labels, check=name).set(1 if result.get("ok") else 0)
            latency.labels(**labels, check=name).set(float(result.get("latency_ms", 0)) / 1000)
    breakers = metadata.get("circuit_breakers")
    if isinstance(breakers, Mapping):
        state = gauge(
            "alianza_circuit_breaker_open", "1 while the service's breaker is open", "service"
        )
        for service, is_open in breakers.items():
            state.labels(**labels, service=service).set(1 if is_open else 0)


def push(registry: CollectorRegistry, job: str) -> bool:
    global _warned
    url = metrics_target().pushgateway_url
    if not url:
        return False
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(url, job=job, registry=registry, timeout=PUSH_TIMEOUT_SECONDS)
    except Exception as exc:
        if not _warned:
            _warned = True
            get_logger().warning(
                "Could not push metrics to the Pushgateway; the task goes on without them",
                error=f"{type(exc).__name__}: {exc}",
            )
        return False
    return True
