"""Injected faults: latency, slow answers, 5xx, malformed JSON and dropped connections.

Every draw comes from ``Random(f"{seed}:{service}:{seq}")`` where ``seq`` is the request's number
for its service, kept in the shared state. A run that makes the same requests in the same order
meets the same faults, whichever process serves them: faults are reproducible, not flaky.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from alianza_jobs.emulators.config import FaultSettings


class FaultKind(StrEnum):
    NONE = "none"
    ERROR = "error"
    MALFORMED = "malformed"
    RESET = "reset"


@dataclass(frozen=True)
class FaultPlan:
    kind: FaultKind
    after_processing: bool
    """True: the request is processed (mail sent) and only the answer is lost or mangled."""
    status: int | None
    delay_s: float


def plan_faults(settings: FaultSettings, *, seed: int, service: str, seq: int) -> FaultPlan:
    rng = random.Random(f"{seed}:{service}:{seq}")
    # Always draw every value, in a fixed order: changing one rate must not reshuffle the others.
    jitter = rng.random()
    slow = rng.random()
    reset = rng.random()
    error = rng.random()
    malformed = rng.random()
    status = rng.choice(settings.error_statuses)
    after = rng.random()

    delay_ms = settings.latency_ms + jitter * settings.latency_jitter_ms
    if slow < settings.slow_rate:
        delay_ms += settings.slow_ms
    if reset < settings.reset_rate:
        kind = FaultKind.RESET
    elif error < settings.error_rate:
        kind = FaultKind.ERROR
    elif malformed < settings.malformed_rate:
        kind = FaultKind.MALFORMED
    else:
        kind = FaultKind.NONE
    return FaultPlan(
        kind=kind,
        # A truncated body is always the answer to a processed request.
        after_processing=kind is FaultKind.MALFORMED
        or after < settings.fault_after_processing_share,
        status=status if kind is FaultKind.ERROR else None,
        delay_s=delay_ms / 1000.0,
    )


class EmulatedConnectionReset(httpx.ReadError):
    """Raised inside the app after the status line went out.

    In-process (``httpx.ASGITransport``) the client receives this very exception, a
    ``httpx.TransportError`` like a real reset; over a socket uvicorn drops the connection mid-body
    and the client sees ``httpx.RemoteProtocolError``. uvicorn logs each one as an ASGI exception.
    """


class ResetResponse(Response):
    def __init__(self) -> None:
        super().__init__(
            content=b"",
            status_code=200,
            headers={"content-length": "4096"},
            media_type="application/json",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": b'{"res', "more_body": True})
        raise EmulatedConnectionReset("connection reset by the emulator (injected fault)")


def truncated(response: Response) -> Response:
    """The same answer with its JSON body cut in half: what a broken proxy delivers."""
    body = bytes(response.body)
    cut = body[: max(1, len(body) // 2)]
    headers = {
        k: v
        for k, v in response.headers.items()
        if k.lower() not in ("content-length", "content-type")
    }
    return Response(
        content=cut,
        status_code=response.status_code,
        headers=headers,
        media_type="application/json",
    )


def gateway_error_page(status: int) -> Response:
    """What an edge proxy sends for 502/503/504: HTML, not the API's JSON."""
    reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
    title = f"{status} {reason.get(status, 'Server Error')}"
    html = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Response(content=html, status_code=status, media_type="text/html")
