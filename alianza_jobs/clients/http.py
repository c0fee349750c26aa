"""What the Stream and Resend clients share: the error taxonomy, the retry loop, rate limiters.

Error taxonomy (what a task does with each kind):

* :class:`RetryableApiError`: the service may answer next time (network error, timeout, 5xx, 429
  ``rate_limit_exceeded``, 409 ``concurrent_idempotent_requests``, a body we could not parse). The
  client has already retried a few times; the task lets its op ``RetryPolicy`` try again later.
* :class:`PermanentApiError`: this *item* is bad (404 unknown video, 422 validation): the task fails
  the item and dead-letters it, and carries on with the others.
* :class:`FatalApiError`: the task cannot go on (401/403, a daily/monthly quota, an open circuit):
  the task fails the run without op retries (see ``platform.failures.dagster_failure``).

Inside one call the client retries retryable errors (``max_attempts``, exponential backoff with
jitter), honouring ``Retry-After`` in seconds or as an HTTP date. A server asking for a longer wait than
``max_retry_wait_s`` gets no sleep from us: the call raises at once with ``retry_after`` set, because
a task has a timeout of a minute or two and Cloudflare's 429 lasts five. The client-side rate
limiter obeys the same cap: when the budget is spent for longer than that, the call raises
:class:`ClientRateLimitedError` (a RetryableApiError; nothing was sent, the breaker ignores it), so
a task stops and leaves the rest to its next tick instead of being killed by its own timeout.

Messages never contain the token or API key: every error built here passes through
:func:`alianza_jobs.redaction.redact` with the client's own secrets.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx

from alianza_jobs.logs import get_logger
from alianza_jobs.redaction import redact, secret_values

if TYPE_CHECKING:
    from alianza_jobs.clients.breaker import CircuitBreaker

T = TypeVar("T")

USER_AGENT = "alianza-jobs/0.1 (+httpx)"
_MIN_SECRET_LEN = 6
# Enough of a non-JSON body to recognise it in a log line (an HTML error page, a proxy's text).
_SNIPPET_CHARS = 200


# -- the error taxonomy ----------------------------------------------------------------------------


class ApiError(Exception):
    """A call to an external API failed. ``status`` is None when no response arrived."""

    kind = "error"

    def __init__(
        self,
        service: str,
        status: int | None,
        code: str,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        self.service = service
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        text = f"{self.service} {where} {self.code}: {self.message}"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g} s)"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are copied and pickled by arguments; ours are keyword-rich, so say how.
        return (type(self), (self.service, self.status, self.code, self.message, self.retry_after))

    @property
    def retryable(self) -> bool:
        return isinstance(self, RetryableApiError)

    def metadata(self) -> dict[str, Any]:
        """Plain values for run metadata and dead-letter rows."""
        return {
            "service": self.service,
            "kind": self.kind,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "retry_after_s": self.retry_after,
        }

    def redacted(self, secrets: Iterable[str]) -> ApiError:
        """The same error with any secret value masked out of its message."""
        clean = redact(self.message, list(secrets))
        if clean == self.message:
            return self
        return type(self)(self.service, self.status, self.code, clean, self.retry_after)


class RetryableApiError(ApiError):
    """Try again later: network error, timeout, 5xx, 429 rate limit, malformed body."""

    kind = "retryable"


class PermanentApiError(ApiError):
    """This item is bad (404 unknown video, 422 validation): fail and dead-letter the item only."""

    kind = "permanent"


class FatalApiError(ApiError):
    """The task cannot go on (401/403, quota exhausted): fail the run, no op retries."""

    kind = "fatal"


class ClientRateLimitedError(RetryableApiError):
    """Our own limiter would have to wait longer than a call may: no request was made.

    Not a failure of the service (the breaker ignores it); ``retry_after`` says when there is room.
    """

    kind = "client_rate_limited"


class CircuitOpenError(FatalApiError):
    """The circuit breaker for the service is open: no request was made."""

    kind = "circuit_open"

    def __init__(self, service: str, opened_until: datetime, last_error: str | None) -> None:
        self.opened_until = opened_until
        self.last_error = last_error
        until = opened_until.astimezone(UTC).strftime("%H:%M:%SZ")
        message = f"circuit open for {service} until {until} (last error: {last_error or 'none'})"
        super().__init__(service, None, "circuit_open", message)

    def _render(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.service, self.opened_until, self.last_error))

    def redacted(self, secrets: Iterable[str]) -> ApiError:
        # last_error was redacted before the breaker stored it.
        return self


# -- time, injectable for tests ---------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Timing:
    """Clocks, sleep and randomness of a client: tests inject fakes instead of waiting."""

    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = _utcnow
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: Callable[[], float] = random.random


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


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


# -- rate limiters ----------------------------------------------------------------------------------


class LimiterWaitTooLong(Exception):
    """Sending now would need a longer wait than the caller allows (``wait`` seconds)."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        super().__init__(f"the rate limit needs a {wait:.1f} s wait")


class RateLimiter(Protocol):
    async def acquire(self, max_wait: float | None = None) -> None:
        """Wait until one more request may be sent, and count it.

        Raises :class:`LimiterWaitTooLong` instead of waiting longer than ``max_wait``: a task
        should stop and leave the rest for its next tick, not be killed by its own timeout.
        """

    def observe(self, response: httpx.Response | None) -> None:
        """A request acquired from this limiter ended: its response, or None if none came."""

    def pause_for(self, seconds: float) -> None:
        """The server said stop (429 + Retry-After): send nothing for ``seconds``."""


class SlidingWindowLimiter:
    """At most ``limit`` requests in any ``window_s`` (Cloudflare: 1,200 per 5 minutes per token).

    A sliding window over our own send times: every window of that length, wherever it starts,
    holds at most ``limit`` sends, so a fixed or sliding window on the server side is respected too.
    Going over costs a lot on Cloudflare (every call gets 429 for five minutes), hence client-side.
    Waiters queue behind a lock, so they are served in order and never stampede.
    """

    def __init__(self, limit: int, window_s: float, timing: Timing | None = None) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._timing = timing or Timing()
        self._sent: collections.deque[float] = collections.deque()
        self._blocked_until = 0.0
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    async def acquire(self, max_wait: float | None = None) -> None:
        async with self._lock:
            while True:
                now = self._timing.monotonic()
                horizon = now - self.window_s
                while self._sent and self._sent[0] <= horizon:
                    self._sent.popleft()
                wait = self._blocked_until - now
                if len(self._sent) >= self.limit:
                    wait = max(wait, self._sent[0] + self.window_s - now)
                if wait <= 0:
                    break
                if max_wait is not None and wait > max_wait:
                    raise LimiterWaitTooLong(wait)
                self.waited_s += wait
                await self._timing.sleep(wait)
            self._sent.append(now)

    def observe(self, response: httpx.Response | None) -> None:
        return None

    def pause_for(self, seconds: float) -> None:
        self._blocked_until = max(self._blocked_until, self._timing.monotonic() + seconds)


class HeaderRateLimiter:
    """Paces requests by Resend's rate limit, learnt from its ``ratelimit-*`` headers.

    Resend's limit is per team and changes with the plan, so ``ratelimit-limit`` is read, not
    hard-coded; its window is a second (its 429 says so). A request goes out while fewer than
    ``limit`` of ours may still be in the server's window: those in flight, and those answered less
    than a window (plus a margin) ago. The server stamps a request somewhere between our send and
    its answer, so answer times are the safe side: pacing from send times was refused now and then
    (1 call in 16 in a CI run) when a request reached the server late. Our own log, not the last
    answer, is the truth between answers, so the end of a rounded-up ``reset`` is never taken for
    a whole new budget.

    ``ratelimit-remaining`` says what our log cannot see: a neighbour on the same key. When it is
    lower than our log predicts, the difference is held back until ``reset``; a 429's
    ``retry-after`` pauses everything. Two simpler rules were measured and dropped: spreading the
    budget evenly over ``reset`` sent at half the limit, and waiting the full ``reset`` (rounded up
    to whole seconds by Resend and by our emulator) after the budget ran out sent at 74%. Before
    the first answer the limit is unknown and nothing is delayed.
    """

    WINDOW_S = 1.0
    MARGIN_S = 0.02

    def __init__(self, timing: Timing | None = None) -> None:
        self._timing = timing or Timing()
        self._lock = asyncio.Lock()
        self._answer = asyncio.Event()
        self._in_flight = 0
        # Answer times within the last window, oldest first (monotonic, so appended in order).
        self._answered: collections.deque[float] = collections.deque()
        # Slots of the server's window that others hold, per the last answer, until `reset`.
        self._held_by_others = 0
        self._reset_at: float | None = None
        self._blocked_until = 0.0
        self.limit: int | None = None
        self.waited_s = 0.0

    async def acquire(self, max_wait: float | None = None) -> None:
        async with self._lock:
            while True:
                now = self._timing.monotonic()
                wait = self._wait(now)
                if wait is None:
                    # `limit` requests in flight: only an answer can free a slot.
                    await self._next_answer(max_wait)
                    continue
                wait = max(wait, self._blocked_until - now)
                if wait <= 0:
                    break
                if max_wait is not None and wait > max_wait:
                    raise LimiterWaitTooLong(wait)
                self.waited_s += wait
                await self._timing.sleep(wait)
            self._in_flight += 1

    def _free(self, now: float) -> int:
        horizon = now - self.WINDOW_S - self.MARGIN_S
        while self._answered and self._answered[0] <= horizon:
            self._answered.popleft()
        if self._reset_at is not None and now >= self._reset_at:
            self._held_by_others, self._reset_at = 0, None
        return (self.limit or 0) - self._in_flight - len(self._answered)

    def _wait(self, now: float) -> float | None:
        """Seconds until a request may go (<= 0: now), or None when it takes an answer first."""
        if self.limit is None:
            return 0.0
        free = self._free(now)
        if free - self._held_by_others >= 1:
            return 0.0
        if free >= 1 and self._reset_at is not None:
            return self._reset_at - now  # the rest is a neighbour's: the server's word decides
        answered = self.limit - self._in_flight
        if answered < 1:
            return None
        # Our slots free up as our answers age out of the window, oldest first.
        return self._answered[-answered] + self.WINDOW_S + self.MARGIN_S - now

    async def _next_answer(self, max_wait: float | None) -> None:
        self._answer.clear()
        try:
            await asyncio.wait_for(self._answer.wait(), timeout=max_wait)
        except TimeoutError:
            raise LimiterWaitTooLong(max_wait or 0.0) from None

    def observe(self, response: httpx.Response | None) -> None:
        now = self._timing.monotonic()
        # Every ended request holds a slot until a window after its end, answered or not: one that
        # timed out may still have been counted by the server.
        self._in_flight = max(0, self._in_flight - 1)
        self._answered.append(now)
        self._answer.set()
        if response is None:
            return
        headers = response.headers
        limit = _int_header(headers, "ratelimit-limit")
        if limit is not None and limit >= 1:
            self.limit = limit
        remaining = _int_header(headers, "ratelimit-remaining")
        reset = _float_header(headers, "ratelimit-reset")
        if self.limit is None or remaining is None or reset is None:
            return
        # What the server has left below what our own log leaves: others' requests.
        self._held_by_others = max(0, self._free(now) - remaining)
        self._reset_at = now + reset if self._held_by_others else None

    def pause_for(self, seconds: float) -> None:
        self._blocked_until = max(self._blocked_until, self._timing.monotonic() + seconds)


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = _float_header(headers, name)
    return None if value is None else int(value)


def _float_header(headers: httpx.Headers, name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if value == value and value >= 0 else None  # NaN/negative: ignore


# -- response helpers -------------------------------------------------------------------------------


def json_body(response: httpx.Response, service: str) -> Any:
    """The parsed JSON of a response; an unparseable body is retryable (proxies fail this way)."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RetryableApiError(
            service,
            response.status_code,
            "malformed_response",
            f"body is not JSON: {body_snippet(response)!r}",
        ) from None


def try_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def body_snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_SNIPPET_CHARS] + ("…" if len(text) > _SNIPPET_CHARS else "")


def malformed(service: str, response: httpx.Response, what: str) -> RetryableApiError:
    return RetryableApiError(service, response.status_code, "malformed_response", what)


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


def emulator_transport(state_dir: Path) -> httpx.AsyncBaseTransport:
    """The project's emulators (Stream and Resend in one ASGI app) as an in-process transport."""
    # Imported on use: the emulators pull in Starlette and are not needed against the real APIs.
    emulators = importlib.import_module("alianza_jobs.emulators")
    return httpx.ASGITransport(app=emulators.combined_app(state_dir))


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
        # As in core.redaction: a value this short would mask ordinary words, and is no real key.
        self._secrets = [s for s in self.secrets if len(s) >= _MIN_SECRET_LEN]

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
            result = await self._attempts(method, path, attempts, parse, params, body, headers)
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
        parse: Callable[[httpx.Response], T],
        params: Mapping[str, str] | None,
        body: Any,
        headers: Mapping[str, str] | None,
    ) -> T:
        log = get_logger(service=self.service)
        attempt = 0
        while True:
            attempt += 1
            error = await self._attempt(method, path, parse, params, body, headers)
            if not isinstance(error, ApiError):
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
