"""Resend client: send one email, or a batch of up to 100 with per-item results.

Never twice: every request carries an ``Idempotency-Key`` derived from what is sent
(:func:`idempotency_key_for`). Resend keeps a key 24 hours and answers a repeat of the same key and
body with the first answer, without sending again; so a run that crashed after Resend accepted a
batch but before we recorded it can simply send the same batch again. What that asks of callers,
batches and rate limits: docs/clients.md, "alianza_jobs.clients.resend".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from alianza_jobs.clients.http import (
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

SERVICE = "resend"
DEFAULT_BASE_URL = "https://api.resend.com"
MAX_BATCH = 100
MAX_IDEMPOTENCY_KEY = 256
QUOTA_ERRORS = frozenset({"daily_quota_exceeded", "monthly_quota_exceeded"})
# A well-formed (v4) UUID no email will ever have: Resend answers 404 for it after authenticating.
# Not the nil UUID, which a strict validator may refuse with a 422 before looking at the key.
PROBE_EMAIL_ID = "3f1c9b2e-7a4d-4e8b-9c1f-5d2a6b8e0f17"


@dataclass(frozen=True)
class OutgoingEmail:
    from_: str
    to: list[str]
    subject: str
    html: str | None
    text: str | None
    reply_to: list[str] | None = None
    headers: dict[str, str] | None = None
    tags: list[dict[str, str]] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON Resend expects (absent fields left out, so the key does not depend on them)."""
        body: dict[str, Any] = {"from": self.from_, "to": list(self.to), "subject": self.subject}
        optional = {
            "html": self.html,
            "text": self.text,
            "reply_to": list(self.reply_to) if self.reply_to is not None else None,
            "headers": dict(self.headers) if self.headers is not None else None,
            "tags": [dict(t) for t in self.tags] if self.tags is not None else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


@dataclass(frozen=True)
class BatchItemResult:
    """The outcome for the email at ``index`` of a batch: an ``id``, or the ``error``."""

    index: int
    id: str | None
    error: PermanentApiError | None = None

    @property
    def ok(self) -> bool:
        return self.id is not None


def idempotency_key_for(emails: Sequence[OutgoingEmail], *, namespace: str = "") -> str:
    """SHA-256 (hex, 64 chars) of the canonical JSON of what is sent, plus ``namespace``.

    Same content (and namespace) gives the same key in any process; any difference in any field,
    in the order of the emails or in the namespace gives another.
    """
    canonical = json.dumps(
        {"namespace": namespace, "emails": [e.to_wire() for e in emails]},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- errors -----------------------------------------------------------------------------------------


def classify_error(response: httpx.Response, now: datetime) -> ApiError:
    """Resend's ``{statusCode, name, message}``: the name decides where the status is shared."""
    status = response.status_code
    body = try_json(response)
    name = body.get("name") if isinstance(body, dict) else None
    text = body.get("message") if isinstance(body, dict) else None
    code = name if isinstance(name, str) and name else f"http_{status}"
    message = text if isinstance(text, str) and text else body_snippet(response) or "(empty body)"
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    if status == 429:
        if code in QUOTA_ERRORS:
            return FatalApiError(SERVICE, status, code, message, retry_after)
        return RetryableApiError(SERVICE, status, code, message, retry_after)
    if status >= 500 or status == 408:
        return RetryableApiError(SERVICE, status, code, message, retry_after)
    if status == 409 and code == "concurrent_idempotent_requests":
        # The first request with this key is still in flight: wait, then get its answer.
        return RetryableApiError(SERVICE, status, code, message, retry_after)
    if status in (401, 403):
        return FatalApiError(SERVICE, status, code, message)
    # 400, 404, 409 invalid_idempotent_request, 422, 451: this request (item, batch) is bad.
    return PermanentApiError(SERVICE, status, code, message)


def _parse_send(response: httpx.Response) -> str:
    body = json_body(response, SERVICE)
    email_id = body.get("id") if isinstance(body, dict) else None
    if not isinstance(email_id, str) or not email_id:
        raise malformed(SERVICE, response, "send answer has no `id`")
    return email_id


def _batch_parser(size: int) -> Callable[[httpx.Response], list[BatchItemResult]]:
    def parse(response: httpx.Response) -> list[BatchItemResult]:
        body = json_body(response, SERVICE)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise malformed(SERVICE, response, "batch answer has no `data` list")
        failed: dict[int, str] = {}
        for item in body.get("errors") or []:
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
                raise malformed(SERVICE, response, f"batch error names no email of ours: {item!r}")
            failed[index] = str(item.get("message") or "rejected")
        ids = []
        for item in body["data"]:
            email_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(email_id, str) or not email_id:
                raise malformed(SERVICE, response, f"batch `data` item without id: {item!r}")
            ids.append(email_id)
        accepted = [i for i in range(size) if i not in failed]
        if len(ids) != len(accepted):
            raise malformed(
                SERVICE,
                response,
                f"batch of {size}: {len(ids)} ids and {len(failed)} errors do not add up",
            )
        # `data` lists the created emails in request order, the rejected ones left out.
        results = {
            i: BatchItemResult(i, email_id) for i, email_id in zip(accepted, ids, strict=True)
        }
        for index, message in failed.items():
            error = PermanentApiError(SERVICE, response.status_code, "validation_error", message)
            results[index] = BatchItemResult(index, None, error)
        return [results[i] for i in range(size)]

    return parse


# -- client -----------------------------------------------------------------------------------------


class ResendClient(ServiceClient):
    """Sends through Resend for one run. Get it from :meth:`ResendEmail.client`."""

    async def send(self, email: OutgoingEmail, *, idempotency_key: str | None = None) -> str:
        """Send one email; returns Resend's id. The key defaults to one derived from the email."""
        key = idempotency_key or idempotency_key_for([email])
        return await self._caller.request(
            "POST",
            "/emails",
            parse=_parse_send,
            body=email.to_wire(),
            headers={"idempotency-key": _check_key(key)},
        )

    async def send_batch(
        self, emails: Sequence[OutgoingEmail], *, idempotency_key: str
    ) -> list[BatchItemResult]:
        """Send up to 100 emails; one result per input email, in input order."""
        if not emails:
            return []
        if len(emails) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} emails, got {len(emails)}")
        result: list[BatchItemResult] = await self._caller.request(
            "POST",
            "/emails/batch",
            parse=_batch_parser(len(emails)),
            body=[e.to_wire() for e in emails],
            headers={
                "idempotency-key": _check_key(idempotency_key),
                "x-batch-validation": "permissive",
            },
        )
        return result

    async def key_access(self) -> tuple[int, str]:
        """What the key may do, learnt from a read that sends nothing (the health check):
        ``(status, "full")``, or ``(401, "sending_only")`` for a key restricted to sending.

        Any other answer raises, an unknown key (403) included.
        """
        try:
            status: int = await self._caller.request(
                "GET", f"/emails/{PROBE_EMAIL_ID}", parse=lambda r: r.status_code
            )
        except PermanentApiError as err:
            # Resend's own 404 (its error body), not one from whatever a wrong base URL points at.
            if err.status == 404 and err.code == "not_found":
                return 404, "full"
            raise
        except FatalApiError as err:
            if err.status == 401 and err.code == "restricted_api_key":
                return 401, "sending_only"
            raise
        return status, "full"


def _check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ValueError(f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key
