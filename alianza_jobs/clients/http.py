"""The call every Stream and Resend request goes through: breaker, rate limit, concurrency, retries.

:class:`ApiCaller` retries retryable errors within one call (exponential backoff with jitter,
``Retry-After`` honoured up to ``max_retry_wait_s``) and redacts the client's secrets from every
error it raises. This module also re-exports the error taxonomy, the limiters and the timing
helpers, which the domains import from here; docs/clients.md has the design.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from alianza_jobs.clients.errors import (
    ApiError,
    CircuitOpenError,
    ClientRateLimitedError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
    body_snippet,
    json_body,
    malformed,
    try_json,
)
from alianza_jobs.clients.ratelimit import (
    HeaderRateLimiter,
    LimiterWaitTooLong,
    RateLimiter,
    SlidingWindowLimiter,
)
from alianza_jobs.clients.timing import Timing, parse_retry_after
from alianza_jobs.logs import get_logger
from alianza_jobs.redaction import secret_values
from alianza_jobs.settings import MIN_SECRET_LEN

if TYPE_CHECKING:
    from alianza_jobs.clients.breaker import CircuitBreaker

__all__ = [
    "ApiCaller",
    "ApiError",
    "CircuitOpenError",
    "ClientRateLimitedError",
    "ErrorClassifier",
    "FatalApiError",
    "HeaderRateLimiter",
    "LimiterWaitTooLong",
    "PermanentApiError",
    "RateLimiter",
    "RetrySettings",
    "RetryableApiError",
    "ServiceClient",
    "SlidingWindowLimiter",
    "Timing",
    "body_snippet",
    "build_async_client",
    "json_body",
    "malformed",
    "parse_retry_after",
    "try_json",
]

T = TypeVar("T")

USER_AGENT = "alianza-jobs/0.1 (+httpx)"


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    max_retry_wait_s: float = 30.0
    """The longest a call sleeps (Retry-After, or our own rate limiter); longer waits raise."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, attempt: int, rand: float) -> float:
        """Wait after failed attempt ``attempt`` (1-based) when the server named none.

        "Equal jitter": half the exponential step is fixed, half random, so the waits grow yet the
        clients of many runs hitting one outage do not retry in lockstep.
        """
        step: float = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return step / 2 + rand * step / 2


def build_async_client(
    *,
    base_url: str,
    headers: Mapping[str, str],
    connect_timeout_s: float,
    read_timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One connection pool per run, explicit timeouts (httpx's default is 5 s for everything)."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"user-agent": USER_AGENT, "accept": "application/json", **headers},
        # Write and pool waits share the read budget: a request is either moving or it is stuck.
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
        follow_redirects=False,
    )


# -- the call: limiter, breaker, retries ------------------------------------------------------------

ErrorClassifier = Callable[[httpx.Response, datetime], ApiError]
"""Turns a non-2xx response into the service's error (it knows the service's error body)."""


@dataclass
class ApiCaller:
    """Sends a service's requests: breaker check, rate limit, bounded concurrency, retries.

    ``calls`` counts HTTP requests actually sent (attempts included), for the tasks' API-call metric.
    """

    service: str
    http: httpx.AsyncClient
    classify_error: ErrorClassifier
    limiter: RateLimiter
    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker: CircuitBreaker | None = None
    timing: Timing = field(default_factory=Timing)
    max_concurrency: int = 8
    secrets: Sequence[str] = ()
    calls: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(max(1, self.max_concurrency))
        # As in redaction: a value this short would mask ordinary words, and is no real key.
        self._secrets = [s for s in self.secrets if len(s) >= MIN_SECRET_LEN]

    async def request(
        self,
        method: str,
        path: str,
        *,
        parse: Callable[[httpx.Response], T],
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        """One logical call; returns ``parse(response)`` of the first 2xx answer, or raises ApiError.

        ``parse`` runs inside the retry loop, so a malformed body (RetryableApiError) is retried.
        """
        breaker = self.breaker
        probe = await breaker.before_call() if breaker is not None else False
        # While half-open exactly one request decides, so the probe gets no retries.
        attempts = 1 if probe else self.retry.max_attempts
        try:
            result = await self._attempts(
                method,
                path,
                attempts,
                lambda: self._attempt(method, path, parse, params, body, headers),
            )
        except ClientRateLimitedError:
            # Nothing was sent, so nothing was learnt about the service.
            if breaker is not None and probe:
                breaker.abandon_probe()
            raise
        except RetryableApiError as err:
            if breaker is not None:
                waited_too_long = (
                    err.retry_after
                    if (err.retry_after or 0) > self.retry.max_retry_wait_s
                    else None
                )
                if err.status == 429 and waited_too_long is None:
                    # "Slow down for a second" is a healthy service pacing us (a neighbour on the
                    # same key, or the previous run's window still full), which the limiter
                    # handles: counted, a few of them would open the circuit on a working API.
                    if probe:
                        breaker.abandon_probe()
                else:
                    await breaker.record_failure(err, probe=probe, open_for=waited_too_long)
            raise
        except ApiError:
            # 404/422/401...: the service answered, so as far as the breaker goes it is up.
            if breaker is not None:
                await breaker.record_success(probe=probe)
            raise
        except BaseException:
            # Cancelled (task timeout) mid-probe: let the next caller probe instead.
            if breaker is not None and probe:
                breaker.abandon_probe()
            raise
        if breaker is not None:
            await breaker.record_success(probe=probe)
        return result

    async def _attempts(
        self,
        method: str,
        path: str,
        attempts: int,
        attempt_once: Callable[[], Awaitable[T | ApiError]],
    ) -> T:
        """Up to ``attempts`` tries of ``attempt_once`` (``method`` and ``path`` name it in logs)."""
        log = get_logger(service=self.service)
        attempt = 0
        while True:
            attempt += 1
            error = await attempt_once()
            if not isinstance(error, ApiError):
                # One line per call at LOG_LEVEL=debug: what was asked, and after how many tries.
                log.debug(
                    f"{self.service} call answered", method=method, path=path, attempt=attempt
                )
                return error
            error = error.redacted([*self._secrets, *secret_values()])
            if isinstance(error, ClientRateLimitedError):
                log.warning(
                    f"{self.service} client-side rate limit spent; not waiting",
                    method=method,
                    path=path,
                    retry_after_s=round(error.retry_after or 0, 3),
                )
                raise error
            if not isinstance(error, RetryableApiError) or attempt >= attempts:
                raise error
            if error.retry_after is not None:
                if error.retry_after > self.retry.max_retry_wait_s:
                    log.warning(
                        f"{self.service} asks to wait longer than we may; giving up this call",
                        method=method,
                        path=path,
                        retry_after_s=error.retry_after,
                        max_retry_wait_s=self.retry.max_retry_wait_s,
                        error=str(error),
                    )
                    raise error
                wait = error.retry_after
            else:
                wait = self.retry.backoff(attempt, self.timing.random())
            self.retries += 1
            log.warning(
                f"{self.service} call failed, retrying",
                method=method,
                path=path,
                attempt=attempt,
                max_attempts=attempts,
                wait_s=round(wait, 3),
                error=str(error),
            )
            await self.timing.sleep(wait)

    async def _attempt(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        params: Mapping[str, str] | None,
        body: Any,
        headers: Mapping[str, str] | None,
    ) -> T | ApiError:
        """One request: its parsed result, or the error describing why it failed."""
        cap = self.retry.max_retry_wait_s
        try:
            async with self._semaphore:
                # The rate-limit slot is taken once a connection slot is ours, right before the
                # request goes: taken earlier, a call queued behind the semaphore would reach the
                # server later than the limiter counted it, and bunch up with the next window's.
                try:
                    await self.limiter.acquire(max_wait=cap)
                except LimiterWaitTooLong as exc:
                    return ClientRateLimitedError(
                        self.service,
                        None,
                        "client_rate_limited",
                        f"the client-side rate limit needs a {exc.wait:.0f} s wait, over the "
                        f"{cap:g} s a call may wait; leave the rest for the next run",
                        retry_after=exc.wait,
                    )
                self.calls += 1
                answer: httpx.Response | None = None
                try:
                    answer = response = await self.http.request(
                        method, path, params=params, json=body, headers=headers
                    )
                finally:
                    self.limiter.observe(answer)
        except httpx.TimeoutException as exc:
            # Returned, not raised from here: httpx's exception holds the request, headers included,
            # and must not travel along as the __context__ of ours.
            return RetryableApiError(
                self.service, None, "timeout", f"{type(exc).__name__} on {method} {path}"
            )
        except httpx.TransportError as exc:
            return RetryableApiError(
                self.service,
                None,
                "network_error",
                f"{type(exc).__name__} on {method} {path}: {exc}",
            )
        if response.is_success:
            try:
                return parse(response)
            except ApiError as exc:
                return exc
        error = self.classify_error(response, self.timing.now())
        if response.status_code == 429 and error.retry_after:
            self.limiter.pause_for(error.retry_after)
        return error


class ServiceClient:
    """What the Stream and Resend clients of one run share: their caller's counters and the state
    of their breaker, which the tasks report."""

    def __init__(self, caller: ApiCaller, breaker: CircuitBreaker) -> None:
        self._caller = caller
        self._breaker = breaker

    @property
    def calls(self) -> int:
        """HTTP requests made (retries included)."""
        return self._caller.calls

    @property
    def retries(self) -> int:
        return self._caller.retries

    def breaker_snapshot(self) -> dict[str, Any]:
        return self._breaker.snapshot()
