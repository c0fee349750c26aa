"""Client-side rate limiters: a sliding window (Cloudflare) and one paced by ``ratelimit-*`` headers (Resend).

Both raise :class:`LimiterWaitTooLong` rather than wait longer than a call may; docs/clients.md
explains why each is shaped as it is and which simpler rules were measured and dropped.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

import httpx

from alianza_jobs.clients.timing import Timing


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


class _PacedLimiter:
    """What both limiters keep: a lock waiters queue behind, and the server's pause."""

    def __init__(self, timing: Timing | None) -> None:
        self._timing = timing or Timing()
        self._lock = asyncio.Lock()
        self._blocked_until = 0.0

    async def _sleep(self, wait: float, max_wait: float | None) -> None:
        """Sleep ``wait`` seconds, or raise LimiterWaitTooLong when that is over ``max_wait``."""
        if max_wait is not None and wait > max_wait:
            raise LimiterWaitTooLong(wait)
        await self._timing.sleep(wait)

    def pause_for(self, seconds: float) -> None:
        self._blocked_until = max(self._blocked_until, self._timing.monotonic() + seconds)


class SlidingWindowLimiter(_PacedLimiter):
    """At most ``limit`` requests in any ``window_s`` (Cloudflare: 1,200 per 5 minutes per token).

    A sliding window over our own send times; waiters queue behind a lock (docs/clients.md).
    """

    def __init__(self, limit: int, window_s: float, timing: Timing | None = None) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window_s > 0")
        super().__init__(timing)
        self.limit = limit
        self.window_s = window_s
        self._sent: collections.deque[float] = collections.deque()

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
                await self._sleep(wait, max_wait)
            self._sent.append(now)

    def observe(self, response: httpx.Response | None) -> None:
        return None


class HeaderRateLimiter(_PacedLimiter):
    """Paces requests by Resend's rate limit, learnt from its ``ratelimit-*`` headers.

    Counts ours in flight and answered within the last window; holds back what ``remaining`` says
    a neighbour on the key uses; a 429's ``retry-after`` pauses all (docs/clients.md).
    """

    WINDOW_S = 1.0
    MARGIN_S = 0.02

    def __init__(self, timing: Timing | None = None) -> None:
        super().__init__(timing)
        self._answer = asyncio.Event()
        self._in_flight = 0
        # Answer times within the last window, oldest first (monotonic, so appended in order).
        self._answered: collections.deque[float] = collections.deque()
        # Slots of the server's window that others hold, per the last answer, until `reset`.
        self._held_by_others = 0
        self._reset_at: float | None = None
        self.limit: int | None = None

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
                await self._sleep(wait, max_wait)
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
