"""Verifying Cloudflare Stream webhooks.

Stream signs each delivery with ``Webhook-Signature: time=<unix seconds>,sig1=<hex>``, where
``sig1`` is HMAC-SHA256, keyed with the webhook secret, of ``"{time}.{raw body}"``. Verify the raw
bytes as received (re-serialised JSON would not match), compare in constant time, and refuse stale
timestamps so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta

HEADER = "Webhook-Signature"
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class WebhookVerificationError(ValueError):
    """The delivery cannot be trusted; ``reason`` is malformed_header, stale or bad_signature."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"webhook rejected ({reason}): {detail}")


def stream_signature(raw_body: bytes, secret: str, timestamp: int) -> str:
    """The ``sig1`` value for a body sent at ``timestamp`` (unix seconds)."""
    message = f"{timestamp}.".encode() + raw_body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_stream_webhook(raw_body: bytes, secret: str, *, timestamp: int) -> str:
    """A full ``Webhook-Signature`` header value (for emulators and tests)."""
    return f"time={timestamp},sig1={stream_signature(raw_body, secret, timestamp)}"


def verify_stream_webhook(
    raw_body: bytes,
    signature_header: str,
    secret: str,
    *,
    tolerance: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> None:
    """Return if the delivery is authentic and fresh; raise :class:`WebhookVerificationError`."""
    if not secret:
        raise ValueError("the webhook secret is empty")
    timestamp, signatures = _parse_header(signature_header)
    current = (now or datetime.now(UTC)).timestamp()
    age = current - timestamp
    if abs(age) > tolerance.total_seconds():
        direction = "old" if age > 0 else "in the future"
        raise WebhookVerificationError(
            "stale",
            f"signed {abs(age):.0f} s {direction}; tolerance is {tolerance.total_seconds():.0f} s",
        )
    expected = stream_signature(raw_body, secret, timestamp)
    # Check every sig1 without stopping early, so timing reveals nothing about which one matched.
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate.lower())
    if not matched:
        raise WebhookVerificationError("bad_signature", "sig1 does not match the body and time")


def _parse_header(header: str) -> tuple[int, list[str]]:
    if not header or not header.strip():
        raise WebhookVerificationError("malformed_header", f"{HEADER} is empty")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookVerificationError("malformed_header", f"{HEADER} part without '='")
        key, value = key.strip(), value.strip()
        if key == "time":
            if not value.isdigit():
                raise WebhookVerificationError("malformed_header", "time is not unix seconds")
            timestamp = int(value)
        elif key == "sig1":
            if not _HEX_SHA256.match(value):
                raise WebhookVerificationError("malformed_header", "sig1 is not a SHA-256 hex")
            signatures.append(value)
        # Other keys are ignored, so a future signature version added beside sig1 breaks nothing.
    if timestamp is None:
        raise WebhookVerificationError("malformed_header", f"{HEADER} has no time")
    if not signatures:
        raise WebhookVerificationError("malformed_header", f"{HEADER} has no sig1")
    return timestamp, signatures
