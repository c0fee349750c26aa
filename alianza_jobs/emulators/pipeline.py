"""The path every emulated API request takes: auth, rate limit, faults, handler, counters.

Order matters and follows the real services: a request is authenticated, then counted against its
token's rate limit (refused requests too, as far as the counters go), then may meet an injected
fault before or after the handler runs; its latency is spent while it is "in flight", which is
when a second request with the same idempotency key sees it as concurrent.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from alianza_jobs.emulators.config import EmulatorConfig, FaultSettings, token_digest
from alianza_jobs.emulators.faults import (
    FaultKind,
    FaultPlan,
    ResetResponse,
    plan_faults,
    truncated,
)
from alianza_jobs.emulators.state import Admission, StateStore

RESET_STATUS = 0
"""Counter status recorded for a dropped connection."""
CLIENT_CLOSED_STATUS = 499
"""Counter status recorded for a request its client abandoned before the answer."""
HOLD_POLL_S = 0.02
"""How often a held request (``hold_requests``) looks whether it has been let go."""


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return Response(
        content=body.encode(),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


@dataclass(frozen=True)
class AuthFailure:
    response: Response


@dataclass
class RequestContext:
    store: StateStore
    config: EmulatorConfig
    settings: FaultSettings
    now: float
    """Emulated time of arrival (seconds since the epoch)."""
    key_sha256: str
    admission: Admission
    plan: FaultPlan
    service: str
    _latency_spent: bool = field(default=False)

    async def spend_latency(self) -> None:
        """Sleep this request's latency once (handlers call it where work is "in flight"), then
        stay there while a test holds the request (its number in ``hold_requests``)."""
        if self._latency_spent:
            return
        self._latency_spent = True
        if self.plan.delay_s > 0:
            await asyncio.sleep(self.plan.delay_s)
        settings = self.settings
        while self.admission.seq in settings.hold_requests:
            await asyncio.sleep(HOLD_POLL_S)
            config = await self.store.call(self.store.config)
            settings = getattr(config, self.service)


Handler = Callable[[Request, RequestContext], Awaitable[Response]]


@dataclass(frozen=True)
class _Prepared:
    config: EmulatorConfig
    now: float
    key_sha256: str | None
    auth_failure: Response | None
    admission: Admission | None


class EmulatedService(ABC):
    name: str

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._background: set[asyncio.Future[None]] = set()

    @abstractmethod
    def settings(self, config: EmulatorConfig) -> FaultSettings: ...

    @abstractmethod
    def authenticate(self, request: Request, config: EmulatorConfig) -> str | AuthFailure:
        """The bearer token (plain, never stored or logged) or the failure to answer with."""

    @abstractmethod
    def rate_limited(self, admission: Admission) -> Response: ...

    @abstractmethod
    def server_error(self, status: int) -> Response: ...

    def penalty_s(self, config: EmulatorConfig) -> float | None:
        return None

    def decorate(
        self, response: Response, admission: Admission | None, config: EmulatorConfig
    ) -> None:
        """Headers every answer carries (Resend's ``ratelimit-*``); none by default."""
        return None

    def _prepare(self, request: Request) -> _Prepared:
        config = self.store.config()
        now = self.store.now(config)
        auth = self.authenticate(request, config)
        if isinstance(auth, AuthFailure):
            return _Prepared(config, now, None, auth.response, None)
        settings = self.settings(config)
        key = token_digest(auth)
        admission = self.store.admit(
            self.name,
            key,
            now=now,
            limit=settings.rate_limit_requests,
            window_s=settings.rate_limit_window_s,
            penalty_s=self.penalty_s(config),
        )
        return _Prepared(config, now, key, None, admission)

    async def handle(self, request: Request, endpoint: str, handler: Handler) -> Response:
        prepared = await self.store.call(self._prepare, request)
        try:
            response = await self._respond(request, prepared, handler)
        except asyncio.CancelledError:
            # The client gave up mid-request (in-process: its task was cancelled by a timeout).
            # Still served as far as the counters go, under nginx's "client closed request".
            task = asyncio.ensure_future(
                self.store.call(self.store.count, self.name, endpoint, CLIENT_CLOSED_STATUS)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise
        seen = RESET_STATUS if isinstance(response, ResetResponse) else response.status_code
        await self.store.call(self.store.count, self.name, endpoint, seen)
        return response

    async def _respond(self, request: Request, prepared: _Prepared, handler: Handler) -> Response:
        config = prepared.config
        settings = self.settings(config)
        response: Response
        if prepared.auth_failure is not None or prepared.admission is None:
            # Unauthenticated calls are not numbered, so they meet no faults; latency still applies.
            if settings.latency_ms > 0:
                await asyncio.sleep(settings.latency_ms / 1000.0)
            response = prepared.auth_failure or self.server_error(500)
            self.decorate(response, None, config)
            return response

        admission = prepared.admission
        plan = plan_faults(settings, seed=config.seed, service=self.name, seq=admission.seq)
        ctx = RequestContext(
            store=self.store,
            config=config,
            settings=settings,
            now=prepared.now,
            key_sha256=prepared.key_sha256 or "",
            admission=admission,
            plan=plan,
            service=self.name,
        )
        if not admission.allowed:
            await ctx.spend_latency()
            response = self.rate_limited(admission)
        elif plan.kind in (FaultKind.ERROR, FaultKind.RESET) and not plan.after_processing:
            await ctx.spend_latency()
            response = self._fault_response(plan)
        else:
            response = await handler(request, ctx)
            await ctx.spend_latency()
            if plan.kind is FaultKind.MALFORMED:
                response = truncated(response)
            elif plan.kind in (FaultKind.ERROR, FaultKind.RESET):
                response = self._fault_response(plan)
        self.decorate(response, admission, config)
        return response

    def _fault_response(self, plan: FaultPlan) -> Response:
        if plan.kind is FaultKind.RESET:
            return ResetResponse()
        return self.server_error(plan.status or 500)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
