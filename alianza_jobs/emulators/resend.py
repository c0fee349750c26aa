"""Resend emulator: single and batch sends, idempotency keys, rate limit, quotas and an inbox.

Wire facts (Resend's API reference and the ``resend`` SDK's types): errors are ``{statusCode,
name, message}``; 401 ``missing_api_key``, 403 ``invalid_api_key`` (the SDK maps exactly these);
422 ``validation_error``/``missing_required_field``; 400 ``invalid_idempotency_key``; 409
``invalid_idempotent_request`` (same key, other payload) and ``concurrent_idempotent_requests``
(same key while the first is in flight); 429 ``rate_limit_exceeded`` with ``retry-after``, and
``daily_quota_exceeded``/``monthly_quota_exceeded``. Every answer carries ``ratelimit-limit``,
``ratelimit-remaining`` and ``ratelimit-reset``.
More: docs/platform.md, "alianza_jobs.emulators.resend".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.config import (
    EmulatorConfig,
    FaultSettings,
    ResendSettings,
    token_digest,
)
from alianza_jobs.emulators.control import EmulatorControl
from alianza_jobs.emulators.faults import gateway_error_page
from alianza_jobs.emulators.pipeline import (
    AuthFailure,
    EmulatedService,
    RequestContext,
    bearer_token,
    json_response,
)
from alianza_jobs.emulators.state import Admission, StateStore

SERVICE = "resend"
"""A key for local use; the emulator accepts any ``re_`` key unless told to require one."""
MAX_RECIPIENTS = 50
MAX_BATCH = 100
MAX_IDEMPOTENCY_KEY = 256

_LOCAL = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})+"
ADDRESS_PATTERN = re.compile(rf"^(?:{_ADDRESS}|[^<>\r\n]*<{_ADDRESS}>)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_ADDRESS_FORMAT = (
    "The email address needs to follow the `email@example.com` or "
    "`Name <email@example.com>` format."
)


def resend_error(
    status: int, name: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response({"statusCode": status, "name": name, "message": message}, status, headers)


# -- validation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    name: str
    message: str


def _addresses(item: Mapping[str, Any], field: str, *, required: bool) -> Invalid | None:
    value = item.get(field)
    if value is None or value == "" or value == []:
        return Invalid("missing_required_field", f"Missing `{field}` field.") if required else None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return Invalid("validation_error", f"Invalid `{field}` field. {_ADDRESS_FORMAT}")
    if len(values) > MAX_RECIPIENTS:
        return Invalid(
            "validation_error",
            f"Too many recipients in `{field}`: {len(values)}. The maximum is {MAX_RECIPIENTS}.",
        )
    for address in values:
        if not ADDRESS_PATTERN.match(address.strip()):
            return Invalid("validation_error", f"Invalid `{field}` field. {_ADDRESS_FORMAT}")
    return None


def validate_email(item: Any, *, in_batch: bool) -> Invalid | None:
    """The first problem with one email, or None. Mirrors Resend's rules that matter to us."""
    if not isinstance(item, dict):
        return Invalid("validation_error", "The email must be a JSON object.")
    problem = _addresses(item, "from", required=True)
    if problem is None and isinstance(item.get("from"), list):
        problem = Invalid("validation_error", f"Invalid `from` field. {_ADDRESS_FORMAT}")
    problem = problem or _addresses(item, "to", required=True)
    for field in ("cc", "bcc", "reply_to"):
        problem = problem or _addresses(item, field, required=False)
    if problem:
        return problem
    subject = item.get("subject")
    if subject is None or subject == "":
        return Invalid("missing_required_field", "Missing `subject` field.")
    if not isinstance(subject, str):
        return Invalid("validation_error", "Invalid `subject` field. It must be a string.")
    if "\r" in subject or "\n" in subject:
        return Invalid(
            "validation_error", "Invalid `subject` field. It must not contain line breaks."
        )
    for field in ("html", "text"):
        if item.get(field) is not None and not isinstance(item[field], str):
            return Invalid("validation_error", f"Invalid `{field}` field. It must be a string.")
    if not item.get("html") and not item.get("text") and not item.get("template"):
        return Invalid("missing_required_field", "Missing `html` or `text` field.")
    headers = item.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            return Invalid("validation_error", "Invalid `headers` field. It must be an object.")
        for name, value in headers.items():
            if not isinstance(value, str) or not _HEADER_NAME.match(name):
                return Invalid("validation_error", f"Invalid header `{name[:64]}`.")
            if "\r" in value or "\n" in value:
                return Invalid(
                    "validation_error",
                    f"Invalid header `{name}`: values must not contain line breaks.",
                )
    tags = item.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            return Invalid("validation_error", "Invalid `tags` field. It must be an array.")
        for tag in tags:
            if not (
                isinstance(tag, dict)
                and isinstance(tag.get("name"), str)
                and _TAG.match(tag["name"])
                and isinstance(tag.get("value", ""), str)
                and (tag.get("value", "") == "" or _TAG.match(tag["value"]))
            ):
                return Invalid(
                    "validation_error",
                    "Invalid `tags` field. Tag names and values may only contain ASCII letters, "
                    "numbers, underscores or dashes, up to 256 characters.",
                )
    if in_batch and item.get("attachments"):
        return Invalid(
            "validation_error", "The `attachments` field is not supported in batch emails."
        )
    if in_batch and item.get("scheduled_at"):
        return Invalid(
            "validation_error", "The `scheduled_at` field is not supported in batch emails."
        )
    return None


def _as_list(value: Any) -> list[str] | None:
    if value is None or value == "" or value == []:
        return None
    return [value] if isinstance(value, str) else list(value)


def fingerprint(item: Mapping[str, Any]) -> str:
    """Same sender, recipients, subject and body: the "same message" a user would see twice."""
    canonical = {
        "from": item.get("from"),
        "to": sorted(_as_list(item.get("to")) or []),
        "cc": sorted(_as_list(item.get("cc")) or []),
        "bcc": sorted(_as_list(item.get("bcc")) or []),
        "subject": item.get("subject"),
        "html": item.get("html"),
        "text": item.get("text"),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:32]


# -- idempotency and delivery (blocking state operations) -------------------------------------------


@dataclass(frozen=True)
class Claim:
    outcome: Literal["new", "replay", "mismatch", "concurrent"]
    status: int | None = None
    body: str | None = None


def claim_key(
    store: StateStore,
    *,
    api_key_sha256: str,
    key: str,
    request_sha256: str,
    now: float,
    settings: ResendSettings,
) -> Claim:
    with store.write() as conn:
        row = conn.execute(
            "SELECT * FROM idempotency WHERE api_key_sha256 = ? AND key = ?",
            (api_key_sha256, key),
        ).fetchone()
        if row is not None and row["created"] <= now - settings.idempotency_ttl_s:
            conn.execute(
                "DELETE FROM idempotency WHERE api_key_sha256 = ? AND key = ?",
                (api_key_sha256, key),
            )
            row = None
        if row is None:
            conn.execute(
                "INSERT INTO idempotency (api_key_sha256, key, request_sha256, state, created, "
                "updated) VALUES (?, ?, ?, 'in_flight', ?, ?)",
                (api_key_sha256, key, request_sha256, now, now),
            )
            return Claim("new")
        if row["request_sha256"] != request_sha256:
            return Claim("mismatch")
        if row["state"] == "done":
            conn.execute(
                "UPDATE idempotency SET replays = replays + 1 WHERE api_key_sha256 = ? AND key = ?",
                (api_key_sha256, key),
            )
            return Claim("replay", row["status"], row["body"])
        if row["updated"] <= now - settings.in_flight_timeout_s:
            # Its process died mid-request: the key is ours now.
            conn.execute(
                "UPDATE idempotency SET updated = ? WHERE api_key_sha256 = ? AND key = ?",
                (now, api_key_sha256, key),
            )
            return Claim("new")
        return Claim("concurrent")


def release_key(store: StateStore, *, api_key_sha256: str, key: str) -> None:
    with store.write() as conn:
        conn.execute(
            "DELETE FROM idempotency WHERE api_key_sha256 = ? AND key = ? AND state = 'in_flight'",
            (api_key_sha256, key),
        )


@dataclass(frozen=True)
class Delivered:
    status: int
    body: str


def deliver(
    store: StateStore,
    *,
    api_key_sha256: str,
    idempotency_key: str | None,
    emails: Sequence[tuple[int | None, Mapping[str, Any]]],
    now: float,
    settings: ResendSettings,
    answer: Callable[[list[str]], tuple[int, Any]],
) -> Delivered | Invalid:
    """Store ``emails`` as delivered and, in the same transaction, the answer for their key.

    Either both happen or neither: a crash can never leave mail sent under a key that would let
    a retry send it again. Quotas are checked under the same write lock.
    """
    now_us = rfc3339.to_us(now)
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    with store.write() as conn:
        for quota, since, name, what in (
            (settings.daily_quota, today, "daily_quota_exceeded", "daily"),
            (settings.monthly_quota, month, "monthly_quota_exceeded", "monthly"),
        ):
            if quota is None:
                continue
            (sent,) = conn.execute(
                "SELECT COUNT(*) FROM emails WHERE created_us >= ?", (rfc3339.to_us(since),)
            ).fetchone()
            if sent + len(emails) > quota:
                return Invalid(name, f"You have reached your {what} email sending quota.")
        (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM emails").fetchone()
        ids: list[str] = []
        rows = []
        for index, item in emails:
            email_id = str(uuid.uuid4())
            ids.append(email_id)
            seq += 1
            rows.append(
                (
                    email_id,
                    seq,
                    now_us,
                    api_key_sha256,
                    str(item["from"]),
                    json.dumps(_as_list(item.get("to"))),
                    _json_or_none(_as_list(item.get("cc"))),
                    _json_or_none(_as_list(item.get("bcc"))),
                    _json_or_none(_as_list(item.get("reply_to"))),
                    str(item["subject"]),
                    item.get("html"),
                    item.get("text"),
                    _json_or_none(item.get("headers")),
                    _json_or_none(item.get("tags")),
                    item.get("scheduled_at"),
                    idempotency_key,
                    index,
                    fingerprint(item),
                )
            )
        conn.executemany(
            "INSERT INTO emails (id, seq, created_us, api_key_sha256, from_addr, to_json, cc_json, "
            "bcc_json, reply_to_json, subject, html, text, headers_json, tags_json, scheduled_at, "
            "idempotency_key, batch_index, fingerprint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        status, payload = answer(ids)
        body = json.dumps(payload, separators=(",", ":"))
        if idempotency_key is not None:
            conn.execute(
                "UPDATE idempotency SET state = 'done', status = ?, body = ?, updated = ? "
                "WHERE api_key_sha256 = ? AND key = ?",
                (status, body, now, api_key_sha256, idempotency_key),
            )
        return Delivered(status, body)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


# -- the inbox -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveredEmail:
    id: str
    from_: str
    to: list[str]
    cc: list[str] | None
    bcc: list[str] | None
    reply_to: list[str] | None
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str] | None
    tags: list[dict[str, str]] | None
    idempotency_key: str | None
    batch_index: int | None
    created_at: datetime
    fingerprint: str
    times_delivered: int
    """How many delivered emails are this same message (1 unless something sent it twice)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.from_,
            "to": self.to,
            "cc": self.cc,
            "bcc": self.bcc,
            "reply_to": self.reply_to,
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "headers": self.headers,
            "tags": self.tags,
            "idempotency_key": self.idempotency_key,
            "batch_index": self.batch_index,
            "created_at": self.created_at.isoformat(),
            "fingerprint": self.fingerprint,
            "times_delivered": self.times_delivered,
        }


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _inbox_entry(row: sqlite3.Row) -> DeliveredEmail:
    return DeliveredEmail(
        id=row["id"],
        from_=row["from_addr"],
        to=json.loads(row["to_json"]),
        cc=_loads(row["cc_json"]),
        bcc=_loads(row["bcc_json"]),
        reply_to=_loads(row["reply_to_json"]),
        subject=row["subject"],
        html=row["html"],
        text=row["text"],
        headers=_loads(row["headers_json"]),
        tags=_loads(row["tags_json"]),
        idempotency_key=row["idempotency_key"],
        batch_index=row["batch_index"],
        created_at=rfc3339.from_us(row["created_us"]),
        fingerprint=row["fingerprint"],
        times_delivered=row["times"],
    )


def inbox(store: StateStore, *, to: str | None = None) -> list[DeliveredEmail]:
    rows = (
        store.connection()
        .execute(
            "SELECT e.*, (SELECT COUNT(*) FROM emails d WHERE d.fingerprint = e.fingerprint) AS times "
            "FROM emails e ORDER BY e.seq"
        )
        .fetchall()
    )
    entries = [_inbox_entry(r) for r in rows]
    if to is not None:
        entries = [e for e in entries if to in e.to or to in (e.cc or []) or to in (e.bcc or [])]
    return entries


def counts_by_idempotency_key(store: StateStore) -> dict[str, int]:
    rows = (
        store.connection()
        .execute(
            "SELECT idempotency_key, COUNT(*) FROM emails WHERE idempotency_key IS NOT NULL "
            "GROUP BY idempotency_key"
        )
        .fetchall()
    )
    return {r[0]: r[1] for r in rows}


def counts_by_message(store: StateStore) -> dict[str, int]:
    rows = (
        store.connection()
        .execute("SELECT fingerprint, COUNT(*) FROM emails GROUP BY fingerprint")
        .fetchall()
    )
    return {r[0]: r[1] for r in rows}


def idempotency_entries(store: StateStore, key: str) -> list[dict[str, Any]]:
    rows = (
        store.connection()
        .execute(
            "SELECT state, status, replays, created, updated FROM idempotency WHERE key = ?",
            (key,),
        )
        .fetchall()
    )
    return [dict(zip(r.keys(), tuple(r), strict=True)) for r in rows]


# -- the HTTP side -----------------------------------------------------------------------------


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
        row = await self.store.call(_email_row, self.store, email_id)
        if row is None:
            return resend_error(404, "not_found", "Email not found")
        entry = _inbox_entry(row)
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


def _email_row(store: StateStore, email_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = (
        store.connection()
        .execute("SELECT *, 1 AS times FROM emails WHERE id = ?", (email_id,))
        .fetchone()
    )
    return row


# -- the Python API ----------------------------------------------------------------------------


class ResendEmulator(EmulatorControl):
    """The Resend side from any process: what was delivered, how often, and its settings."""

    def inbox(self, *, to: str | None = None) -> list[DeliveredEmail]:
        """Every delivered email in delivery order (optionally only those addressed to ``to``)."""
        return inbox(self.store, to=to)

    def count(self) -> int:
        row = self.store.connection().execute("SELECT COUNT(*) FROM emails").fetchone()
        return int(row[0])

    def counts_by_idempotency_key(self) -> dict[str, int]:
        """Emails delivered under each key (a batch key counts its emails; replays add nothing)."""
        return counts_by_idempotency_key(self.store)

    def counts_by_message(self) -> dict[str, int]:
        """Deliveries per distinct message (fingerprint): more than 1 means a duplicate."""
        return counts_by_message(self.store)

    def duplicates(self) -> list[DeliveredEmail]:
        return [e for e in self.inbox() if e.times_delivered > 1]

    def idempotency(self, key: str) -> list[dict[str, Any]]:
        """The stored entries for ``key`` (state ``in_flight``/``done``, status, replays)."""
        return idempotency_entries(self.store, key)

    def clear_inbox(self) -> None:
        with self.store.write() as conn:
            conn.execute("DELETE FROM emails")
            conn.execute("DELETE FROM idempotency")

    def configure(self, **settings: Any) -> ResendSettings:
        """Change Resend settings for every process (``rate_limit_requests=``, ``daily_quota=``)."""
        return self.store.update_config({"resend": settings}).resend
