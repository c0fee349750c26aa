"""The error taxonomy of the API clients: what a task does with each kind of failure.

:class:`RetryableApiError` (try later), :class:`PermanentApiError` (this item is bad),
:class:`FatalApiError` (the run cannot go on), and the response helpers that turn an unparseable
body into a retryable error. See docs/clients.md for the reasoning behind each class.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpx

from alianza_jobs.redaction import redact

# Enough of a non-JSON body to recognise it in a log line (an HTML error page, a proxy's text).
_SNIPPET_CHARS = 200


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


# -- response helpers ------------------------------------------------------------------------------


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
