"""A circuit breaker per external service, with state that outlives a run.

Closed, open after ``threshold`` consecutive retryable failures (or at once when the server asks
for a longer wait than a call may take), then half-open for exactly one probe call. The state lives
in a :class:`BreakerStore` (load/save of plain values), so the next run, in another process, starts
where the last one left off; docs/clients.md has the full design.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from alianza_jobs.clients.errors import ApiError, CircuitOpenError
from alianza_jobs.logs import get_logger

__all__ = [
    "BreakerState",
    "BreakerStore",
    "CircuitBreaker",
    "CircuitOpenError",
    "MemoryBreakerStore",
    "StoredBreaker",
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

    @classmethod
    def of(cls, stored: StoredBreaker) -> BreakerState:
        """A state from whatever a store kept (an unknown state name reads as closed)."""
        state = stored.state
        return cls(
            state=state if state in ("closed", "open", "half_open") else "closed",  # type: ignore[arg-type]
            consecutive_failures=int(stored.consecutive_failures or 0),
            opened_until=stored.opened_until,
            last_error=stored.last_error,
        )


class StoredBreaker(Protocol):
    """What a store keeps per service: plain values, so a store needs nothing from this module."""

    @property
    def state(self) -> str: ...

    @property
    def consecutive_failures(self) -> int: ...

    @property
    def opened_until(self) -> datetime | None: ...

    @property
    def last_error(self) -> str | None: ...


class BreakerStore(Protocol):
    """Satisfied structurally, e.g. by ``alianza_jobs.platform.breakers.DatabaseBreakerStore``."""

    async def load(self, service: str) -> StoredBreaker | None: ...

    async def save(self, service: str, state: BreakerState) -> None: ...


class MemoryBreakerStore:
    """State for one process (tests, or a client without a persistent store)."""

    def __init__(self) -> None:
        self.states: dict[str, BreakerState] = {}

    async def load(self, service: str) -> BreakerState | None:
        return self.states.get(service)

    async def save(self, service: str, state: BreakerState) -> None:
        self.states[service] = state


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
        stored = await self.store.load(self.service)
        self._state = BreakerState() if stored is None else BreakerState.of(stored)
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
