"""What tests, benchmarks and the CLI use to steer the emulators from any process."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.config import EmulatorConfig
from alianza_jobs.emulators.state import Clock, Counter, StateStore


class EmulatorControl:
    """Configuration, emulated clock and request counters of one state directory."""

    def __init__(self, state_dir: Path | str, *, clock: Clock | None = None) -> None:
        self.store = StateStore(state_dir, clock=clock)

    @property
    def state_dir(self) -> Path:
        return self.store.state_dir

    def config(self) -> EmulatorConfig:
        return self.store.config()

    def update_config(self, patch: Mapping[str, Any]) -> EmulatorConfig:
        """Deep-merge a patch such as ``{"seed": 7, "stream": {"error_rate": 0.1}}``."""
        return self.store.update_config(patch)

    def now(self) -> datetime:
        return rfc3339.from_us(rfc3339.to_us(self.store.now()))

    def advance_clock(self, seconds: float) -> datetime:
        """Move emulated time forward for every process using this state (videos progress,
        rate-limit windows and penalties pass) without anybody sleeping."""
        return rfc3339.from_us(rfc3339.to_us(self.store.advance_clock(seconds)))

    def counters(self) -> list[Counter]:
        return self.store.counters()

    def calls(
        self,
        *,
        service: str | None = None,
        endpoint: str | None = None,
        status: int | None = None,
    ) -> int:
        """Requests served so far matching the filters (benchmarks: API calls per row)."""
        return sum(
            c.count
            for c in self.store.counters()
            if (service is None or c.service == service)
            and (endpoint is None or c.endpoint == endpoint)
            and (status is None or c.status == status)
        )

    def reset_counters(self) -> None:
        self.store.reset_counters()

    def reset(self, *, keep_config: bool = False) -> None:
        """Forget videos, mail, keys, limits, counters (and the config unless ``keep_config``)."""
        self.store.reset(keep_config=keep_config)
