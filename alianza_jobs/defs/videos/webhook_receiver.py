"""The Cloudflare Stream webhook receiver: an ASGI app that verifies each delivery's
``Webhook-Signature``, stores it (idempotently, committed) and answers 200, for
``apply_stream_webhooks`` to settle the video in a run of its own.

It does as little as it can per request, so it answers in milliseconds under a flood: no Dagster,
no Stream call, one INSERT. Everything it refuses is refused before anything is stored, with a
status and a one-word reason (logged without the body or the secret): 401 for a missing, malformed,
wrong or stale signature; 413 for a body over :data:`MAX_BODY_BYTES`; 400 for a body that is not a
JSON object with a ``uid``; 404 and 405 for other paths and methods. A database that cannot store
it gets 503: Stream delivers again later. A uid the platform does not know is stored, and ignored
when applied. ``webhooks serve`` runs it (``alianza_jobs.cli.webhooks``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from alianza_jobs.clients.webhooks import HEADER, WebhookVerificationError, verify_stream_webhook
from alianza_jobs.db.models import STREAM_UID_MAX
from alianza_jobs.defs.videos.webhook_sql import store_delivery
from alianza_jobs.logs import TaskLogger, get_logger

WEBHOOK_PATH = "/stream/webhook"
HEALTH_PATH = "/healthz"
# A delivery is one video object, a few kilobytes even with generous `meta`; far more is not one.
MAX_BODY_BYTES = 256 * 1024
# Stream signs with the time it sends; older (or later) than this is a replay or a broken clock.
SIGNATURE_TOLERANCE = timedelta(minutes=5)
STATE_MAX = 32

Clock = Callable[[], datetime]


class Refused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class WebhookReceiver:
    """Verifies and stores Stream's deliveries on ``engine`` (its own, kept for the process)."""

    def __init__(
        self,
        engine: AsyncEngine,
        secret: str,
        *,
        tolerance: timedelta = SIGNATURE_TOLERANCE,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Clock | None = None,
        log: TaskLogger | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty")
        self.engine = engine
        self._secret = secret
        self.tolerance = tolerance
        self.max_body_bytes = max_body_bytes
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.log = log or get_logger(component="stream_webhooks")

    def __repr__(self) -> str:  # the secret is never shown
        return f"WebhookReceiver(engine={self.engine.url!r}, secret=***)"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(WEBHOOK_PATH, self.receive, methods=["POST"]),
                Route(HEALTH_PATH, self.health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: _http_error},
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def receive(self, request: Request) -> Response:
        try:
            body = await self._read_body(request)
            self._verify(request, body)
            uid, state, payload = _parse(body)
        except Refused as refused:
            self.log.warning(
                "Webhook refused",
                reason=refused.reason,
                detail=refused.detail,
                status=refused.status,
                client=request.client.host if request.client else None,
            )
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        try:
            stored = await store_delivery(
                self.engine,
                body_sha256=hashlib.sha256(body).hexdigest(),
                uid=uid,
                state=state,
                payload=payload,
                now=self.clock(),
            )
        except (SQLAlchemyError, OSError) as exc:
            # Not acknowledged, so Stream delivers it again: nothing is lost while the database is.
            self.log.error("Webhook not stored: the database failed", exc, uid=uid)
            return JSONResponse({"error": "unavailable"}, status_code=503)
        self.log.debug("Webhook stored" if stored else "Webhook already stored", uid=uid)
        return JSONResponse({"stored": stored})

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Refused(413, "too_large", f"{declared} bytes; at most {self.max_body_bytes}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                # Stop reading: a sender that lies about (or omits) its length gets no further.
                raise Refused(413, "too_large", f"over {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _verify(self, request: Request, body: bytes) -> None:
        header = request.headers.get(HEADER)
        if header is None:
            raise Refused(401, "missing_signature", f"no {HEADER} header")
        try:
            verify_stream_webhook(
                body, header, self._secret, tolerance=self.tolerance, now=self.clock()
            )
        except WebhookVerificationError as exc:
            raise Refused(401, exc.reason, str(exc)) from None


def _parse(body: bytes) -> tuple[str, str | None, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "not_json", "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, "no_uid", f"the body is a JSON {type(payload).__name__}, not an object")
    uid = payload.get("uid")
    if not isinstance(uid, str) or not uid.strip():
        raise Refused(400, "no_uid", "the body has no uid")
    if len(uid) > STREAM_UID_MAX:
        raise Refused(400, "bad_uid", f"the uid is {len(uid)} characters long")
    status = payload.get("status")
    state = status.get("state") if isinstance(status, dict) else None
    return uid, state[:STATE_MAX] if isinstance(state, str) else None, payload


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    reason = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    headers = getattr(exc, "headers", None)
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


__all__ = [
    "HEALTH_PATH",
    "MAX_BODY_BYTES",
    "WEBHOOK_PATH",
    "WebhookReceiver",
]
