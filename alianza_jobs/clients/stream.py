"""Cloudflare Stream client: one video's status, the catalog listing, and the account's webhook.

Wire format: ``GET /accounts/{account}/stream/{uid}``, ``GET /accounts/{account}/stream`` and
``PUT /accounts/{account}/stream/webhook`` answer ``{success, errors, messages, result}``; errors
are branched on the HTTP status, not Cloudflare's numeric codes. Malformed items, paging without a
cursor and the webhook: docs/clients.md, "alianza_jobs.clients.stream".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from alianza_jobs.clients.breaker import CircuitBreaker
from alianza_jobs.clients.http import (
    ApiCaller,
    ApiError,
    FatalApiError,
    PermanentApiError,
    RetryableApiError,
    ServiceClient,
    body_snippet,
    json_body,
    malformed,
    parse_retry_after,
    try_json,
)
from alianza_jobs.logs import get_logger

SERVICE = "cloudflare_stream"
DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
MAX_PAGE_SIZE = 1000
STREAM_STATES = frozenset(
    {"pendingupload", "downloading", "queued", "inprogress", "ready", "error", "live-inprogress"}
)
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class StreamVideo:
    uid: str
    state: str
    """One of :data:`STREAM_STATES` (or whatever arrived, when ``parse_error`` is set)."""
    pct_complete: float | None
    duration: float | None
    """Seconds; None while unknown (Cloudflare sends -1)."""
    error_reason_code: str | None
    error_reason_text: str | None
    created: datetime | None
    modified: datetime | None
    ready_to_stream: bool
    meta: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    parse_error: str | None = None
    """Why this item's JSON could not be read; None for a well-formed video."""

    @property
    def error_reason(self) -> str | None:
        """``"CODE: text"`` for the ``streamings.error_reason`` column."""
        parts = [p for p in (self.error_reason_code, self.error_reason_text) if p]
        return ": ".join(parts) if parts else None

    def require_valid(self) -> StreamVideo:
        """This video, or PermanentApiError when its JSON was malformed."""
        if self.parse_error is not None:
            raise PermanentApiError(
                SERVICE,
                200,
                "malformed_item",
                f"video {self.uid or '(no uid)'}: {self.parse_error}",
            )
        return self


def parse_video(raw: object) -> StreamVideo:
    """A :class:`StreamVideo` from one item of Stream's JSON. Never raises: see ``parse_error``."""
    data: dict[str, Any] = raw if isinstance(raw, dict) else {"value": raw}
    problems: list[str] = []
    if not isinstance(raw, dict):
        problems.append(f"not a JSON object: {type(raw).__name__}")

    uid = data.get("uid")
    if not isinstance(uid, str) or not uid:
        problems.append("missing uid")
        uid = ""

    status = data.get("status")
    state = ""
    pct: float | None = None
    code: str | None = None
    text: str | None = None
    if not isinstance(status, dict):
        problems.append("missing status")
    else:
        raw_state = status.get("state")
        state = raw_state if isinstance(raw_state, str) else ""
        if raw_state not in STREAM_STATES:
            problems.append(f"unknown state {raw_state!r}")
        pct = _lenient_float(status.get("pctComplete"))
        # Some payloads spell these errReasonCode/errReasonText.
        code = _text(status.get("errorReasonCode", status.get("errReasonCode")))
        text = _text(status.get("errorReasonText", status.get("errReasonText")))

    duration: float | None = None
    raw_duration = data.get("duration")
    if raw_duration is None:
        pass
    elif isinstance(raw_duration, bool) or not isinstance(raw_duration, int | float):
        problems.append(f"duration is not a number: {raw_duration!r}")
    elif raw_duration >= 0:
        duration = float(raw_duration)
    elif raw_duration != -1:
        problems.append(f"negative duration {raw_duration!r}")

    created = _timestamp(data, "created", problems)
    modified = _timestamp(data, "modified", problems)
    meta = data.get("meta")
    return StreamVideo(
        uid=uid,
        state=state,
        pct_complete=pct,
        duration=duration,
        error_reason_code=code,
        error_reason_text=text,
        created=created,
        modified=modified,
        ready_to_stream=data.get("readyToStream") is True,
        meta=meta if isinstance(meta, dict) else {},
        raw=data,
        parse_error="; ".join(problems) or None,
    )


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _lenient_float(value: object) -> float | None:
    # pctComplete is informative only (a string on the wire): unreadable means "not known".
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _timestamp(data: Mapping[str, Any], key: str, problems: list[str]) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    problems.append(f"unreadable {key} {value!r}")
    return None


@dataclass(frozen=True)
class WebhookRegistration:
    """The account's webhook as ``PUT .../stream/webhook`` answered it."""

    notification_url: str
    modified: datetime | None
    secret: str
    """What deliveries are signed with (``Webhook-Signature``); keep it like a token."""

    def __repr__(self) -> str:
        return (
            f"WebhookRegistration(notification_url={self.notification_url!r}, "
            f"modified={self.modified!r}, secret='***')"
        )


def rfc3339(value: datetime) -> str:
    """UTC with a ``Z``; naive datetimes are taken as UTC."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- errors -----------------------------------------------------------------------------------------


def classify_error(response: httpx.Response, now: datetime) -> ApiError:
    """Cloudflare's ``{success:false, errors:[{code,message}]}``, branched on the HTTP status."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    message = _error_message(response)
    if status == 429:
        return RetryableApiError(SERVICE, status, "rate_limit_exceeded", message, retry_after)
    if status >= 500 or status == 408:
        code = "timeout" if status in (408, 504) else "server_error"
        return RetryableApiError(SERVICE, status, code, message, retry_after)
    if status == 401:
        return FatalApiError(SERVICE, status, "unauthorized", message)
    if status == 403:
        return FatalApiError(SERVICE, status, "forbidden", message)
    if status == 402:
        # Stream answers a storage/minutes quota this way: nothing a retry soon will fix.
        return FatalApiError(SERVICE, status, "quota_exceeded", message)
    if status == 404:
        return PermanentApiError(SERVICE, status, "not_found", message)
    if status == 422:
        return PermanentApiError(SERVICE, status, "validation_error", message)
    return PermanentApiError(SERVICE, status, f"http_{status}", message)


def _error_message(response: httpx.Response) -> str:
    body = try_json(response)
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for item in errors:
            if isinstance(item, dict):
                code = item.get("code")
                text = item.get("message") or ""
                parts.append(f"[{code}] {text}" if code is not None else str(text))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return body_snippet(response) or response.reason_phrase or "(empty body)"


def _envelope_result(response: httpx.Response) -> Any:
    body = json_body(response, SERVICE)
    if not isinstance(body, dict) or "result" not in body:
        raise malformed(SERVICE, response, "response is not a Cloudflare envelope (no `result`)")
    if body.get("success") is False:
        # Cloudflare reports failures with a 4xx/5xx; a 2xx saying otherwise is a broken answer.
        raise RetryableApiError(
            SERVICE, response.status_code, "unsuccessful_envelope", _error_message(response)
        )
    return body["result"]


def _parse_one(response: httpx.Response) -> StreamVideo:
    result = _envelope_result(response)
    if not isinstance(result, dict):
        raise malformed(SERVICE, response, "`result` is not a video object")
    return parse_video(result)


def _parse_probe(response: httpx.Response) -> int:
    body = json_body(response, SERVICE)
    if (
        not isinstance(body, dict)
        or body.get("success") is not True
        or not isinstance(body.get("result"), list)
    ):
        raise malformed(SERVICE, response, "not a successful Cloudflare listing")
    return response.status_code


def _parse_webhook(response: httpx.Response) -> WebhookRegistration:
    result = _envelope_result(response)
    if not isinstance(result, dict):
        raise malformed(SERVICE, response, "`result` is not a webhook object")
    url, secret = result.get("notificationUrl"), result.get("secret")
    if not isinstance(url, str) or not isinstance(secret, str) or not secret:
        raise malformed(SERVICE, response, "webhook without a string notificationUrl and secret")
    # Informative only: an unreadable `modified` is unknown, not a failed registration.
    modified = _timestamp(result, "modified", [])
    return WebhookRegistration(notification_url=url, modified=modified, secret=secret)


def _parse_list(response: httpx.Response) -> list[StreamVideo]:
    result = _envelope_result(response)
    if not isinstance(result, list):
        raise malformed(SERVICE, response, "`result` is not a list of videos")
    return [parse_video(item) for item in result]


# -- client -----------------------------------------------------------------------------------------


class StreamClient(ServiceClient):
    """Calls Stream for one run. Get it from :meth:`CloudflareStream.client`."""

    def __init__(self, caller: ApiCaller, account_id: str, breaker: CircuitBreaker) -> None:
        super().__init__(caller, breaker)
        self._account = quote(account_id, safe="")

    async def get_video(self, uid: str) -> StreamVideo:
        """The video; PermanentApiError ``not_found`` for an unknown uid, ``malformed_item`` for
        a video whose JSON is unreadable."""
        if not uid:
            raise ValueError("uid must not be empty")
        path = f"/accounts/{self._account}/stream/{quote(uid, safe='')}"
        video = await self._caller.request("GET", path, parse=_parse_one)
        return video.require_valid()

    async def set_webhook(self, notification_url: str) -> WebhookRegistration:
        """Point the account's one webhook at ``notification_url`` (replacing any other); the
        answer carries the secret its deliveries are signed with. A URL Stream refuses is a
        PermanentApiError (400)."""
        if not notification_url:
            raise ValueError("notification_url must not be empty")
        path = f"/accounts/{self._account}/stream/webhook"
        return await self._caller.request(
            "PUT", path, body={"notificationUrl": notification_url}, parse=_parse_webhook
        )

    async def probe(self) -> int:
        """An authenticated listing of at most one video, read for its envelope only (the health
        check); returns the HTTP status."""
        path = f"/accounts/{self._account}/stream"
        return await self._caller.request("GET", path, parse=_parse_probe, params={"limit": "1"})

    async def find_videos(self, uids: Sequence[str]) -> list[StreamVideo]:
        """The videos among ``uids`` that Stream still has, in one call (its ``id`` filter).

        A uid absent from the answer is a video Stream no longer knows. Up to 1,000 uids per call.
        Items with malformed JSON come back with ``parse_error`` set.
        """
        if not 1 <= len(uids) <= MAX_PAGE_SIZE:
            raise ValueError(f"between 1 and {MAX_PAGE_SIZE} uids per call")
        params = {"id": ",".join(uids), "limit": str(MAX_PAGE_SIZE)}
        path = f"/accounts/{self._account}/stream"
        return await self._caller.request("GET", path, parse=_parse_list, params=params)

    async def list_videos(
        self,
        *,
        status: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        asc: bool = True,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncIterator[StreamVideo]:
        """Every video matching the filters, in creation order, each uid once.

        Items with malformed JSON are yielded with ``parse_error`` set (see the module docstring).
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        if status is not None and status not in STREAM_STATES:
            raise ValueError(f"status must be one of {sorted(STREAM_STATES)}")
        path = f"/accounts/{self._account}/stream"
        seen: set[str] = set()
        cursor = after if asc else before
        stepped_past: datetime | None = None
        while True:
            params = {"asc": "true" if asc else "false", "limit": str(page_size)}
            if status is not None:
                params["status"] = status
            lower, upper = (cursor, before) if asc else (after, cursor)
            if lower is not None:
                params["after"] = rfc3339(lower)
            if upper is not None:
                params["before"] = rfc3339(upper)
            page = await self._caller.request("GET", path, parse=_parse_list, params=params)
            fresh = 0
            edge: datetime | None = None
            for video in page:
                if video.created is not None and (
                    edge is None or (video.created > edge if asc else video.created < edge)
                ):
                    edge = video.created
                key = video.uid or json.dumps(video.raw, sort_keys=True, default=str)
                if key in seen:
                    continue
                seen.add(key)
                fresh += 1
                yield video
            if len(page) < page_size:
                return
            if edge is None:
                get_logger(service=SERVICE).warning(
                    "Stream listing stopped: a full page without readable `created` timestamps",
                    page_size=page_size,
                )
                return
            if fresh:
                # Re-read the boundary timestamp: videos sharing it may straddle the pages.
                cursor = edge - _TICK if asc else edge + _TICK
                continue
            if stepped_past == edge:
                return
            get_logger(service=SERVICE).warning(
                "A full page of Stream videos shares one `created` timestamp; stepping past it "
                "(videos beyond the page with that same timestamp cannot be reached)",
                created=rfc3339(edge),
                page_size=page_size,
            )
            stepped_past = edge
            cursor = edge
