"""The benchmark's workloads, one module each; ``WORKLOADS`` in the order they run. The trigger
workloads (``idle``, ``latency``, ``webhook_flood``) run only when named or with ``--triggers``."""

from __future__ import annotations

from benchmarks.workloads.base import Workload
from benchmarks.workloads.code_location import CodeLocation
from benchmarks.workloads.email_queue import EmailDrain
from benchmarks.workloads.session_cleanup import SessionCleanup
from benchmarks.workloads.triggers import Idle, Latency
from benchmarks.workloads.video_queue import VideoQueue
from benchmarks.workloads.webhook_flood import WebhookFlood

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        VideoQueue(),
        EmailDrain(),
        SessionCleanup(),
        CodeLocation(),
        Idle(),
        Latency(),
        WebhookFlood(),
    )
}

__all__ = ["WORKLOADS", "Workload"]
