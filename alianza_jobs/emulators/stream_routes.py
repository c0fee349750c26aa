"""The Stream emulator's wire side: the ASGI routes (get one video, list videos, the account's
webhook, Cloudflare's answer to any other path), Cloudflare's authentication and error answers in
its envelope ``{result, success, errors, messages}``, and a video rendered as the ``cloudflare``
SDK's ``cloudflare.types.stream.Video`` at the time of the request.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from alianza_jobs.emulators import rfc3339, stream_webhooks
from alianza_jobs.emulators.config import EmulatorConfig, FaultSettings, token_digest
from alianza_jobs.emulators.constants import EMULATOR_WEBHOOK_SECRET
from alianza_jobs.emulators.faults import gateway_error_page
from alianza_jobs.emulators.pipeline import (
    AuthFailure,
    EmulatedService,
    RequestContext,
    bearer_token,
    json_response,
)
from alianza_jobs.emulators.state import Admission
from alianza_jobs.emulators.stream_queries import BadRequest, ListQuery, get_row, list_rows
from alianza_jobs.emulators.stream_videos import state_at

SERVICE = "stream"

# Cloudflare's error codes. 971 (rate limit) and 10000 (authentication) are documented and seen in
# the wild; the Stream-specific "not found" code could not be confirmed against a real response:
# clients must branch on the HTTP status (as the clients do), never on these numbers.
CODE_RATE_LIMITED = 971
CODE_AUTH = 10000
CODE_NOT_FOUND = 10003
CODE_BAD_REQUEST = 10002
CODE_INTERNAL = 10001
CODE_NO_ROUTE = 7000

WEBHOOK_PATH = "/accounts/{account_id}/stream/webhook"


def _customer_code(account_id: str) -> str:
    return hashlib.sha256(account_id.encode()).hexdigest()[:16]


def render_video(row: sqlite3.Row, now_us: int, account_id: str) -> dict[str, Any]:
    """One video as ``GET /accounts/{account_id}/stream/{uid}`` returns it at ``now_us``."""
    uid = row["uid"]
    state = state_at(row, now_us)
    base = f"https://customer-{_customer_code(account_id)}.cloudflarestream.com/{uid}"
    transitions = [row["created_us"], row["started_us"]]
    for boundary in ("queued_us", "inprogress_us", "final_us"):
        if row[boundary] <= now_us:
            transitions.append(row[boundary])
    modified_us = max(transitions)
    uploaded = state not in ("pendingupload", "downloading")
    known = state in ("inprogress", "ready")

    status: dict[str, Any] = {"state": state}
    if state == "inprogress":
        span = max(1, row["final_us"] - row["inprogress_us"])
        pct = min(99.999999, 100.0 * (now_us - row["inprogress_us"]) / span)
        status.update(pctComplete=f"{pct:.6f}", step="encoding")
    elif state == "ready":
        status["pctComplete"] = "100.000000"
    if state == "error":
        status["step"] = "encoding"
        if row["legacy_error_spelling"]:
            status.update(errReasonCode=row["error_code"], errReasonText=row["error_text"])
        else:
            status.update(errorReasonCode=row["error_code"], errorReasonText=row["error_text"])
    else:
        status.update(errorReasonCode="", errorReasonText="")

    return {
        "uid": uid,
        "creator": row["creator"],
        "thumbnail": f"{base}/thumbnails/thumbnail.jpg",
        "thumbnailTimestampPct": 0,
        "readyToStream": state == "ready",
        "readyToStreamAt": rfc3339.format_us(row["final_us"]) if state == "ready" else None,
        "status": status,
        "meta": json.loads(row["meta"]),
        "created": rfc3339.format_us(row["created_us"]),
        "modified": rfc3339.format_us(modified_us),
        "scheduledDeletion": None,
        "size": row["size"] if uploaded else 0,
        "preview": f"{base}/watch",
        "allowedOrigins": [],
        "requireSignedURLs": False,
        "uploaded": rfc3339.format_us(row["queued_us"]) if uploaded else None,
        "uploadExpiry": (
            rfc3339.format_us(row["created_us"] + 3_600_000_000)
            if state == "pendingupload"
            else None
        ),
        "maxSizeBytes": None,
        "maxDurationSeconds": None,
        "duration": row["duration"] if known else -1,
        "input": {
            "width": row["width"] if known else -1,
            "height": row["height"] if known else -1,
        },
        "playback": {"hls": f"{base}/manifest/video.m3u8", "dash": f"{base}/manifest/video.mpd"},
        "watermark": None,
        "clippedFrom": None,
        "liveInput": None,
    }


def _notification_url(body: object) -> str:
    """The ``notificationUrl`` of a PUT body, an absolute http(s) URL; BadRequest otherwise."""
    url = body.get("notificationUrl") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise BadRequest("notificationUrl is required: a string with an absolute http(s) URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        raise BadRequest("notificationUrl is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("notificationUrl must be an absolute http or https URL")
    return url


def envelope(result: Any, **extra: Any) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": [], **extra}


def failure(
    status: int, code: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response(
        {
            "result": None,
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
        },
        status,
        headers,
    )


class StreamService(EmulatedService):
    name = SERVICE

    def settings(self, config: EmulatorConfig) -> FaultSettings:
        return config.stream

    def penalty_s(self, config: EmulatorConfig) -> float | None:
        return config.stream.rate_limit_penalty_s

    def authenticate(self, request: Request, config: EmulatorConfig) -> str | AuthFailure:
        settings = config.stream
        token = bearer_token(request) or request.headers.get("x-auth-key") or None
        if token is None:
            return AuthFailure(failure(401, CODE_AUTH, "Authentication error"))
        digest = token_digest(token)
        required = settings.required_token_sha256
        if (
            required is not None and digest != required
        ) or digest in settings.revoked_tokens_sha256:
            return AuthFailure(failure(401, CODE_AUTH, "Authentication error"))
        account = request.path_params.get("account_id")
        if settings.required_account is not None and account != settings.required_account:
            return AuthFailure(failure(403, CODE_AUTH, "Authentication error"))
        return token

    def rate_limited(self, admission: Admission) -> Response:
        return failure(
            429,
            CODE_RATE_LIMITED,
            "Please wait and consider throttling your request speed",
            {"retry-after": str(admission.retry_after_s or 1)},
        )

    def server_error(self, status: int) -> Response:
        if status == 500:
            return failure(500, CODE_INTERNAL, "Internal Server Error")
        return gateway_error_page(status)

    async def get_video(self, request: Request) -> Response:
        return await self.handle(
            request, "GET /accounts/{account_id}/stream/{uid}", self._get_video
        )

    async def _get_video(self, request: Request, ctx: RequestContext) -> Response:
        uid = str(request.path_params["uid"])
        row = await self.store.call(get_row, self.store, uid)
        if row is None:
            return failure(404, CODE_NOT_FOUND, "Not Found")
        account = str(request.path_params["account_id"])
        return json_response(envelope(render_video(row, rfc3339.to_us(ctx.now), account)))

    async def list_videos(self, request: Request) -> Response:
        return await self.handle(request, "GET /accounts/{account_id}/stream", self._list_videos)

    async def _list_videos(self, request: Request, ctx: RequestContext) -> Response:
        try:
            query = ListQuery.from_params(request.query_params)
        except BadRequest as exc:
            return failure(400, CODE_BAD_REQUEST, str(exc))
        now_us = rfc3339.to_us(ctx.now)
        rows, total = await self.store.call(list_rows, self.store, query, now_us)
        account = str(request.path_params["account_id"])
        extra: dict[str, Any] = {"range": len(rows)}
        if total is not None:
            extra["total"] = total
        return json_response(envelope([render_video(r, now_us, account) for r in rows], **extra))

    async def put_webhook(self, request: Request) -> Response:
        return await self.handle(request, f"PUT {WEBHOOK_PATH}", self._put_webhook)

    async def _put_webhook(self, request: Request, ctx: RequestContext) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:  # UnicodeDecodeError included
            return failure(400, CODE_BAD_REQUEST, "The request body is not valid JSON")
        try:
            url = _notification_url(body)
        except BadRequest as exc:
            return failure(400, CODE_BAD_REQUEST, str(exc))
        hook = await self.store.call(
            stream_webhooks.set_webhook,
            self.store,
            url,
            account_id=str(request.path_params["account_id"]),
            secret=ctx.config.stream.webhook_secret or EMULATOR_WEBHOOK_SECRET,
            modified_us=rfc3339.to_us(ctx.now),
        )
        return json_response(envelope(hook.wire()))

    async def get_webhook(self, request: Request) -> Response:
        return await self.handle(request, f"GET {WEBHOOK_PATH}", self._get_webhook)

    async def _get_webhook(self, request: Request, ctx: RequestContext) -> Response:
        hook = await self.store.call(stream_webhooks.get_webhook, self.store)
        # One webhook per account: another account's is not this one's.
        if hook is None or hook.account_id != request.path_params["account_id"]:
            return failure(404, CODE_NOT_FOUND, "Not Found")
        return json_response(envelope(hook.wire()))

    async def delete_webhook(self, request: Request) -> Response:
        return await self.handle(request, f"DELETE {WEBHOOK_PATH}", self._delete_webhook)

    async def _delete_webhook(self, request: Request, ctx: RequestContext) -> Response:
        hook = await self.store.call(stream_webhooks.get_webhook, self.store)
        if hook is None or hook.account_id != request.path_params["account_id"]:
            return failure(404, CODE_NOT_FOUND, "Not Found")
        await self.store.call(stream_webhooks.delete_webhook, self.store)
        return json_response(envelope(""))

    async def no_route(self, request: Request) -> Response:
        return failure(400, CODE_NO_ROUTE, "No route for that URI")

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/accounts/{account_id}/stream", self.list_videos, methods=["GET"]),
            # Before the uid route, which would take "webhook" for a uid.
            Route(WEBHOOK_PATH, self.put_webhook, methods=["PUT"]),
            Route(WEBHOOK_PATH, self.get_webhook, methods=["GET"]),
            Route(WEBHOOK_PATH, self.delete_webhook, methods=["DELETE"]),
            Route("/accounts/{account_id}/stream/{uid}", self.get_video, methods=["GET"]),
            Route(
                "/{path:path}",
                self.no_route,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]
