"""The Resend emulator's wire side: the ASGI routes (single and batch sends, one email by id, a 404
for any other path), authentication, rate-limit headers and the idempotency-key protocol. Wire
facts (Resend's API reference and the ``resend`` SDK's types): errors are ``{statusCode, name,
message}``; 401 ``missing_api_key``, 403 ``invalid_api_key`` (the SDK maps exactly these); 422
``validation_error``/``missing_required_field``; 400 ``invalid_idempotency_key``; 409
``invalid_idempotent_request`` (same key, other payload) and ``concurrent_idempotent_requests``
(same key while the first is in flight); 429 ``rate_limit_exceeded`` with ``retry-after``, and
``daily_quota_exceeded``/``monthly_quota_exceeded``. Every answer carries ``ratelimit-limit``,
``ratelimit-remaining`` and ``ratelimit-reset`` (docs/platform.md, "alianza_jobs.emulators.resend").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from alianza_jobs.emulators.config import EmulatorConfig, FaultSettings, token_digest
from alianza_jobs.emulators.faults import gateway_error_page
from alianza_jobs.emulators.pipeline import (
    AuthFailure,
    EmulatedService,
    RequestContext,
    bearer_token,
    json_response,
)
from alianza_jobs.emulators.resend_store import (
    claim_key,
    deliver,
    email_row,
    inbox_entry,
    release_key,
)
from alianza_jobs.emulators.resend_validation import Invalid, validate_email
from alianza_jobs.emulators.state import Admission, StateStore

SERVICE = "resend"
MAX_BATCH = 100
MAX_IDEMPOTENCY_KEY = 256


def resend_error(
    status: int, name: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response({"statusCode": status, "name": name, "message": message}, status, headers)


def _request_digest(path: str, mode: str, raw: bytes, parsed: Any) -> str:
    if parsed is _UNPARSEABLE:
        material = path.encode() + b"\0" + mode.encode() + b"\0" + raw
    else:
        material = json.dumps(
            {"path": path, "mode": mode, "body": parsed}, sort_keys=True, separators=(",", ":")
        ).encode()
    return hashlib.sha256(material).hexdigest()


_UNPARSEABLE = object()


class ResendService(EmulatedService):
    name = SERVICE

    def __init__(self, store: StateStore) -> None:
        super().__init__(store)
        # Sends outlive a disconnected client; keep their tasks referenced until they finish.
        self._inflight: set[asyncio.Task[Response]] = set()

    def settings(self, config: EmulatorConfig) -> FaultSettings:
        return config.resend

    def authenticate(self, request: Request, config: EmulatorConfig) -> str | AuthFailure:
        token = bearer_token(request)
        if token is None:
            return AuthFailure(
                resend_error(401, "missing_api_key", "Missing API key in the authorization header.")
            )
        settings = config.resend
        digest = token_digest(token)
        if (
            not token.startswith("re_")
            or (
                settings.required_token_sha256 is not None
                and digest != settings.required_token_sha256
            )
            or digest in settings.revoked_tokens_sha256
        ):
            return AuthFailure(resend_error(403, "invalid_api_key", "API key is invalid."))
        return token

    def rate_limited(self, admission: Admission) -> Response:
        return resend_error(
            429,
            "rate_limit_exceeded",
            "Too many requests. You can only make "
            f"{admission.limit} requests per second. See rate limit response headers for more "
            "information. Or contact support to increase rate limit.",
            {"retry-after": str(admission.retry_after_s or 1)},
        )

    def server_error(self, status: int) -> Response:
        if status == 500:
            return resend_error(500, "application_error", "Something went wrong.")
        return gateway_error_page(status)

    def decorate(
        self, response: Response, admission: Admission | None, config: EmulatorConfig
    ) -> None:
        settings = config.resend
        if admission is None:
            limit, remaining = settings.rate_limit_requests, settings.rate_limit_requests
            reset = max(1, round(settings.rate_limit_window_s))
        else:
            limit, remaining, reset = admission.limit, admission.remaining, admission.reset_s
        response.headers["ratelimit-limit"] = str(limit)
        response.headers["ratelimit-remaining"] = str(max(0, remaining))
        response.headers["ratelimit-reset"] = str(reset)

    # -- endpoints -------------------------------------------------------------------------------

    async def send_email(self, request: Request) -> Response:
        return await self.handle(request, "POST /emails", self._send_email)

    async def send_batch(self, request: Request) -> Response:
        return await self.handle(request, "POST /emails/batch", self._send_batch)

    async def get_email(self, request: Request) -> Response:
        return await self.handle(request, "GET /emails/{id}", self._get_email)

    async def not_found(self, request: Request) -> Response:
        return resend_error(404, "not_found", "The requested endpoint does not exist.")

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/emails", self.send_email, methods=["POST"]),
            Route("/emails/batch", self.send_batch, methods=["POST"]),
            Route("/emails/{email_id}", self.get_email, methods=["GET"]),
        ]

    async def _send_email(self, request: Request, ctx: RequestContext) -> Response:
        return await self._send(request, ctx, batch=False)

    async def _send_batch(self, request: Request, ctx: RequestContext) -> Response:
        return await self._send(request, ctx, batch=True)

    async def _send(self, request: Request, ctx: RequestContext, *, batch: bool) -> Response:
        raw = await request.body()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = _UNPARSEABLE
        mode = (request.headers.get("x-batch-validation") or "strict").strip().lower()
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            return resend_error(
                400, "invalid_idempotency_key", "The key must be between 1-256 chars."
            )
        if key is not None:
            claim = await self.store.call(
                claim_key,
                self.store,
                api_key_sha256=ctx.key_sha256,
                key=key,
                request_sha256=_request_digest(request.url.path, mode, raw, parsed),
                now=ctx.now,
                settings=ctx.config.resend,
            )
            if claim.outcome == "mismatch":
                return resend_error(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload.",
                )
            if claim.outcome == "concurrent":
                return resend_error(
                    409,
                    "concurrent_idempotent_requests",
                    "Same idempotency key used while original request is still in progress.",
                )
            if claim.outcome == "replay":
                return Response(
                    content=(claim.body or "").encode(),
                    status_code=claim.status or 200,
                    media_type="application/json",
                )
        task = asyncio.ensure_future(self._process(ctx, parsed, mode, key, batch=batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _process(
        self, ctx: RequestContext, parsed: Any, mode: str, key: str | None, *, batch: bool
    ) -> Response:
        # The request is "in flight" from here: a second request with its key gets a 409.
        await ctx.spend_latency()
        try:
            outcome = self._plan(parsed, mode, batch=batch)
            if isinstance(outcome, Response):
                return outcome
            emails, errors = outcome
            permissive = batch and mode == "permissive"

            def answer(ids: list[str]) -> tuple[int, Any]:
                if not batch:
                    return 200, {"id": ids[0]}
                payload: dict[str, Any] = {"data": [{"id": i} for i in ids]}
                if permissive:
                    payload["errors"] = errors
                return 200, payload

            result = await self.store.call(
                deliver,
                self.store,
                api_key_sha256=ctx.key_sha256,
                idempotency_key=key,
                emails=emails,
                now=ctx.now,
                settings=ctx.config.resend,
                answer=answer,
            )
            if isinstance(result, Invalid):
                return resend_error(429, result.name, result.message)
            key = None  # stored with the answer: nothing to release
            return Response(
                content=result.body.encode(),
                status_code=result.status,
                media_type="application/json",
            )
        finally:
            if key is not None:
                # Failed before sending: the same key may be retried with a corrected request.
                await self.store.call(
                    release_key, self.store, api_key_sha256=ctx.key_sha256, key=key
                )

    def _plan(
        self, parsed: Any, mode: str, *, batch: bool
    ) -> Response | tuple[list[tuple[int | None, Mapping[str, Any]]], list[dict[str, Any]]]:
        """The emails to send and the per-index errors, or the answer refusing the request."""
        if parsed is _UNPARSEABLE:
            return resend_error(400, "validation_error", "The request body is not valid JSON.")
        if not batch:
            problem = validate_email(parsed, in_batch=False)
            if problem is not None:
                return resend_error(422, problem.name, problem.message)
            return [(None, parsed)], []
        if mode not in ("strict", "permissive"):
            return resend_error(
                422,
                "validation_error",
                "Invalid `x-batch-validation` header. Use `strict` or `permissive`.",
            )
        if not isinstance(parsed, list):
            return resend_error(
                422, "validation_error", "The request body must be an array of emails."
            )
        if not parsed:
            return resend_error(422, "validation_error", "The batch must contain at least 1 email.")
        if len(parsed) > MAX_BATCH:
            return resend_error(
                422,
                "validation_error",
                f"Too many emails in the batch: {len(parsed)}. The maximum is {MAX_BATCH}.",
            )
        emails: list[tuple[int | None, Mapping[str, Any]]] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(parsed):
            problem = validate_email(item, in_batch=True)
            if problem is None:
                emails.append((index, item))
            elif mode == "strict":
                return resend_error(422, problem.name, f"emails[{index}]: {problem.message}")
            else:
                errors.append({"index": index, "message": problem.message})
        # Strict mode returned at the first invalid email; permissive may send none at all.
        return emails, errors

    async def _get_email(self, request: Request, ctx: RequestContext) -> Response:
        email_id = str(request.path_params["email_id"])
        row = await self.store.call(email_row, self.store, email_id)
        if row is None:
            return resend_error(404, "not_found", "Email not found")
        entry = inbox_entry(row)
        created = entry.created_at.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"
        return json_response(
            {
                "object": "email",
                "id": entry.id,
                "message_id": f"<{entry.id}@resend.dev>",
                "to": entry.to,
                "from": entry.from_,
                "created_at": created,
                "subject": entry.subject,
                "html": entry.html,
                "text": entry.text,
                "bcc": entry.bcc,
                "cc": entry.cc,
                "reply_to": entry.reply_to,
                "last_event": "delivered",
                "scheduled_at": None,
                "tags": entry.tags,
            }
        )
