"""The benchmark's workloads, one module each; ``WORKLOADS`` in the order they run."""

from __future__ import annotations

from benchmarks.workloads.base import Workload
from benchmarks.workloads.code_location import CodeLocation
from benchmarks.workloads.email_queue import EmailDrain
from benchmarks.workloads.session_cleanup import SessionCleanup
from benchmarks.workloads.video_queue import VideoQueue

WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (VideoQueue(), EmailDrain(), SessionCleanup(), CodeLocation())
}

__all__ = ["WORKLOADS", "Workload"]
