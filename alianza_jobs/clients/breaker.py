"""A circuit breaker per external service, with state that outlives a run.

Every Dagster run is its own process and the email queue runs every minute: without a breaker an
outage means each tick retries against the dead API and burns the rate limit. With it:

* **closed**: calls go through. Each call that ends in a *retryable* failure (after the client's own
  retries) counts; a success resets the count. A permanent item error (404, 422) or a fatal one
  (401) means the service answered: it is not the service failing and does not count. Nor does a
  429 whose ``retry-after`` a call may wait out: the service is up and pacing us.
* **open**: after ``threshold`` consecutive failures, or at once when the server asked us to stay
  away longer than a call may wait (Cloudflare's five-minute 429), until ``opened_until``. Calls
  raise :class:`CircuitOpenError` without any request: ``circuit open for cloudflare_stream until
  12:34:56Z (last error: ...)``.
* **half_open**: after the cool-down, exactly one probe call (one request, no retries) decides:
  success closes the circuit, failure opens it for another cool-down. Other calls in this process
  wait for the probe's verdict rather than pile on.

The state lives in a :class:`BreakerStore`, so the next run (another process) starts where the last
one left off. Two processes may both probe at the end of a cool-down (the store protocol is kept to
load/save so a database table backs it easily); that costs one extra request, never a stampede.
The state is loaded once per client (per run) and saved on every change.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from alianza_jobs.clients.http import ApiError, CircuitOpenError
from alianza_jobs.logs import get_logger

__all__ = [
    "BreakerState",
    "BreakerStore",
    "CircuitBreaker",
    "CircuitOpenError",
    "FileBreakerStore",
    "MemoryBreakerStore",
]

BreakerStateName = Literal["closed", "open", "half_open"]
_LAST_ERROR_CHARS = 300


@dataclass(frozen=True)
class BreakerState:
    """One row of the ``circuit_breakers`` table (service is the key)."""

    state: BreakerStateName = "closed"
    consecutive_failures: int = 0
    opened_until: datetime | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["opened_until"] = self.opened_until.isoformat() if self.opened_until else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BreakerState:
        until = data.get("opened_until")
        state = data.get("state", "closed")
        return cls(
            state=state if state in ("closed", "open", "half_open") else "closed",
            consecutive_failures=int(data.get("consecutive_failures") or 0),
            opened_until=datetime.fromisoformat(until) if until else None,
            last_error=data.get("last_error"),
        )


class BreakerStore(Protocol):
    async def load(self, service: str) -> BreakerState | None: ...

    async def save(self, service: str, state: BreakerState) -> None: ...


class MemoryBreakerStore:
    """State for one process (tests, or a client without a persistent store)."""

    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}
        self.saves = 0

    async def load(self, service: str) -> BreakerState | None:
        return self.states.get(service)

    async def save(self, service: str, state: BreakerState) -> None:
        self.saves += 1
        self.states[service] = state


class FileBreakerStore:
    """State in a JSON file (local runs without a database, cross-process tests).

    Writes replace the file atomically; the tiny file I/O runs in a thread so it never blocks the
    event loop a task's timeout depends on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self, service: str) -> BreakerState | None:
        data = await asyncio.to_thread(self._read)
        entry = data.get(service)
        return BreakerState.from_json(entry) if isinstance(entry, dict) else None

    async def save(self, service: str, state: BreakerState) -> None:
        await asyncio.to_thread(self._write, service, state)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, service: str, state: BreakerState) -> None:
        data = self._read()
        data[service] = state.to_json()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class CircuitBreaker:
    service: str
    store: BreakerStore
    threshold: int = 5
    cool_down: timedelta | float = timedelta(seconds=120)
    clock: Callable[[], datetime] = _utcnow
    transitions: list[dict[str, Any]] = field(default_factory=list)
    """What happened in this client's lifetime (opened, half_open, closed), for run metadata."""

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("breaker threshold must be at least 1")
        if not isinstance(self.cool_down, timedelta):
            self.cool_down = timedelta(seconds=self.cool_down)
        self._state = BreakerState()
        self._probe_done: asyncio.Event | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def _cool_down(self) -> timedelta:
        assert isinstance(self.cool_down, timedelta)
        return self.cool_down

    async def load(self) -> BreakerState:
        self._state = await self.store.load(self.service) or BreakerState()
        if self._state.state != "closed":
            get_logger(service=self.service).info(
                f"Circuit for {self.service} is {self._state.state} (from an earlier run)",
                **self._fields(self._state),
            )
        return self._state

    async def before_call(self) -> bool:
        """Raise CircuitOpenError while open; return True when this call is the probe."""
        while True:
            state = self._state
            if state.state == "closed":
                return False
            if (
                state.state == "open"
                and state.opened_until is not None
                and self.clock() < state.opened_until
            ):
                raise CircuitOpenError(self.service, state.opened_until, state.last_error)
            if self._probe_done is not None:
                await self._probe_done.wait()
                continue
            self._probe_done = asyncio.Event()
            try:
                await self._change(replace(state, state="half_open"), "half_open")
            except BaseException:
                self.abandon_probe()
                raise
            get_logger(service=self.service).info(
                f"Circuit for {self.service} half-open: one probe call decides",
                last_error=state.last_error,
            )
            return True

    async def record_success(self, *, probe: bool = False) -> None:
        state = self._state
        if probe:
            self._finish_probe()
        elif state.state != "closed":
            # A call that started before the circuit opened: only the probe may close it.
            return
        if state.state == "closed" and state.consecutive_failures == 0:
            return
        await self._change(BreakerState(), "closed" if state.state != "closed" else None)
        if state.state != "closed":
            get_logger(service=self.service).info(
                f"Circuit for {self.service} closed: the probe call succeeded",
                previous_error=state.last_error,
            )

    async def record_failure(
        self, error: ApiError, *, probe: bool = False, open_for: float | None = None
    ) -> None:
        """Count a retryable failure; ``open_for`` opens at once (server asked for a long wait)."""
        if probe:
            self._finish_probe()
        state = self._state
        now = self.clock()
        failures = state.consecutive_failures + 1
        last_error = str(error)[:_LAST_ERROR_CHARS]
        if not (probe or open_for or failures >= self.threshold or state.state != "closed"):
            await self._change(
                replace(state, consecutive_failures=failures, last_error=last_error), None
            )
            return
        until = now + max(self._cool_down, timedelta(seconds=open_for or 0))
        if state.state == "open" and state.opened_until and state.opened_until > until:
            until = state.opened_until  # never shorten a wait someone asked for
        new = BreakerState("open", failures, until, last_error)
        was_open = state.state == "open"
        await self._change(new, None if was_open else "opened")
        if not was_open:
            reason = (
                "the probe call failed"
                if probe
                else f"the server asked to wait {open_for:g} s"
                if open_for
                else f"{failures} consecutive failures"
            )
            get_logger(service=self.service).warning(
                f"Circuit for {self.service} opened: {reason}", **self._fields(new)
            )

    def abandon_probe(self) -> None:
        """The probe never finished (cancelled): stay half-open so the next call probes."""
        self._finish_probe()

    def snapshot(self) -> dict[str, Any]:
        """Plain values for run metadata: current state and this run's transitions."""
        state = self._state
        return {
            "service": self.service,
            "state": state.state,
            "consecutive_failures": state.consecutive_failures,
            "opened_until": state.opened_until.isoformat() if state.opened_until else None,
            "last_error": state.last_error,
            "threshold": self.threshold,
            "cool_down_s": self._cool_down.total_seconds(),
            "transitions": list(self.transitions),
        }

    def _finish_probe(self) -> None:
        if self._probe_done is not None:
            self._probe_done.set()
            self._probe_done = None

    async def _change(self, new: BreakerState, event: str | None) -> None:
        self._state = new
        if event is not None:
            self.transitions.append(
                {"event": event, "at": self.clock().isoformat(), **self._fields(new)}
            )
        await self.store.save(self.service, new)

    @staticmethod
    def _fields(state: BreakerState) -> dict[str, Any]:
        return {
            "state": state.state,
            "consecutive_failures": state.consecutive_failures,
            "opened_until": state.opened_until.isoformat() if state.opened_until else None,
            "last_error": state.last_error,
        }
