"""What the Stream and Resend resources share: timeouts, retries, the breaker, the emulator switch.

Each service's resource subclasses :class:`ApiResource`, adds its credentials and limits, and opens
its client through :meth:`ApiResource.open_caller`, which builds the one ``httpx.AsyncClient`` (one
connection pool per run), loads the breaker's state, and wires retries and rate limiting together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from alianza_jobs.resources.breaker import BreakerStore, CircuitBreaker, MemoryBreakerStore
from alianza_jobs.resources.http import (
    ApiCaller,
    ErrorClassifier,
    RateLimiter,
    RetrySettings,
    Timing,
    build_async_client,
    emulator_transport,
)


class ApiResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    max_attempts: int = 3
    max_retry_wait_s: float = Field(
        default=30.0,
        description=(
            "Longest wait a call sleeps through (Retry-After, or the client-side rate limit); "
            "a longer one fails the call at once with retry_after set."
        ),
    )
    emulator_state_dir: str | None = Field(
        default=None,
        description="Serve the API from the project's emulator in-process (ALIANZA_ENV=local).",
    )
    breaker_failure_threshold: int = 5
    breaker_cool_down_s: float = 120.0

    @asynccontextmanager
    async def open_caller(
        self,
        *,
        service: str,
        base_url: str,
        emulator_base_url: str,
        token: str,
        classify_error: ErrorClassifier,
        limiter: Callable[[Timing], RateLimiter],
        max_concurrency: int,
        breaker_store: BreakerStore | None,
        timing: Timing | None,
    ) -> AsyncIterator[tuple[ApiCaller, CircuitBreaker]]:
        timing = timing or Timing()
        transport = None
        if self.emulator_state_dir is not None:
            transport = emulator_transport(Path(self.emulator_state_dir))
            base_url = emulator_base_url
        breaker = CircuitBreaker(
            service,
            breaker_store or MemoryBreakerStore(),
            threshold=self.breaker_failure_threshold,
            cool_down=self.breaker_cool_down_s,
            clock=timing.now,
        )
        await breaker.load()
        async with build_async_client(
            base_url=base_url,
            headers={"authorization": f"Bearer {token}"},
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            max_connections=max_concurrency,
            transport=transport,
        ) as http:
            caller = ApiCaller(
                service=service,
                http=http,
                classify_error=classify_error,
                limiter=limiter(timing),
                retry=RetrySettings(
                    max_attempts=self.max_attempts, max_retry_wait_s=self.max_retry_wait_s
                ),
                breaker=breaker,
                timing=timing,
                max_concurrency=max_concurrency,
                secrets=[token],
            )
            yield caller, breaker
