"""Stream webhook signatures: valid, tampered, stale, malformed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alianza_jobs.clients.webhooks import (
    WebhookVerificationError,
    sign_stream_webhook,
    stream_signature,
    verify_stream_webhook,
)

SECRET = "whsec-SENTINEL-5b2c9e1a"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
BODY = b'{"uid":"vid1","readyToStream":true,"status":{"state":"ready"}}'


def test_valid_signature_passes() -> None:
    header = sign_stream_webhook(BODY, SECRET, timestamp=T - 30)
    verify_stream_webhook(BODY, header, SECRET, now=NOW)


def test_signature_matches_the_documented_construction() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert stream_signature(BODY, SECRET, T) == expected
    assert sign_stream_webhook(BODY, SECRET, timestamp=T) == f"time={T},sig1={expected}"


@pytest.mark.parametrize(
    ("body", "secret", "timestamp_shift"),
    [
        (BODY + b" ", SECRET, 0),
        (BODY.replace(b"ready", b"error", 1), SECRET, 0),
        (BODY, "another-secret", 0),
    ],
    ids=["body-appended", "body-changed", "wrong-secret"],
)
def test_bad_signature(body: bytes, secret: str, timestamp_shift: int) -> None:
    header = sign_stream_webhook(BODY, secret, timestamp=T)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_stream_webhook(body, header, SECRET, now=NOW)
    assert caught.value.reason == "bad_signature"
    assert SECRET not in str(caught.value)


def test_time_is_part_of_what_is_signed() -> None:
    signature = stream_signature(BODY, SECRET, T - 10)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_stream_webhook(BODY, f"time={T},sig1={signature}", SECRET, now=NOW)
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "age", [timedelta(minutes=6), timedelta(minutes=-6)], ids=["old", "future"]
)
def test_stale_timestamps_are_refused(age: timedelta) -> None:
    stamp = int((NOW - age).timestamp())
    header = sign_stream_webhook(BODY, SECRET, timestamp=stamp)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_stream_webhook(BODY, header, SECRET, now=NOW)
    assert caught.value.reason == "stale"
    # A wider tolerance accepts the same delivery.
    verify_stream_webhook(BODY, header, SECRET, now=NOW, tolerance=timedelta(minutes=10))


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "sig1=" + "a" * 64,
        f"time={T}",
        f"time=yesterday,sig1={'a' * 64}",
        f"time={T},sig1=nothex",
        f"time={T};sig1={'a' * 64}",
        "garbage",
    ],
    ids=["empty", "blank", "no-time", "no-sig", "time-not-int", "sig-not-hex", "wrong-sep", "junk"],
)
def test_malformed_headers(header: str) -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        verify_stream_webhook(BODY, header, SECRET, now=NOW)
    assert caught.value.reason == "malformed_header"


def test_any_of_several_signatures_and_uppercase_hex() -> None:
    good = stream_signature(BODY, SECRET, T).upper()
    header = f"time={T}, sig1={'0' * 64}, sig1={good}, v2=ignored"
    verify_stream_webhook(BODY, header, SECRET, now=NOW)


def test_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        verify_stream_webhook(BODY, sign_stream_webhook(BODY, "x", timestamp=T), "", now=NOW)
