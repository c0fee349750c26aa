"""The emulators' runtime configuration: faults, limits, auth requirements and video timelines.

It lives in the state database (not in the process), because the processes that change it (a test,
a reliability suite, ``alianza-jobs emulate``'s admin route) are rarely the ones serving requests.
Changes apply from the next request on, in every process sharing the state directory.
More: docs/platform.md, "alianza_jobs.emulators.config".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


def token_digest(token: str) -> str:
    """What the state keeps instead of a token: enough to compare, useless to an attacker."""
    return hashlib.sha256(token.encode()).hexdigest()


class FaultSettings(BaseModel):
    """Faults one service injects. Rates are probabilities per request, drawn from a seeded RNG."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_ms: float = Field(0.0, ge=0)
    latency_jitter_ms: float = Field(0.0, ge=0)
    slow_rate: float = Field(0.0, ge=0, le=1)
    slow_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    """Share of requests answered with a 5xx (one of ``error_statuses``)."""
    error_statuses: list[int] = Field(default_factory=lambda: [500, 502, 503])
    malformed_rate: float = Field(0.0, ge=0, le=1)
    """Share of requests answered 200 with a truncated JSON body."""
    reset_rate: float = Field(0.0, ge=0, le=1)
    """Share of requests whose connection is dropped after the status line (a transport error)."""
    fault_after_processing_share: float = Field(0.5, ge=0, le=1)
    """Of the faulted requests, the share that fail *after* the work was done (the email was sent,
    only the answer is lost): the case idempotency keys exist for."""

    required_token_sha256: str | None = None
    revoked_tokens_sha256: list[str] = Field(default_factory=list)
    rate_limit_requests: int = Field(1200, ge=1)
    rate_limit_window_s: float = Field(300.0, gt=0)
    hold_requests: list[int] = Field(default_factory=list)
    """Numbers of requests (as counted for this service, from 1) that, once in flight and past
    their latency, wait there until their number is taken off this list: a test's synchronization
    point (a request provably in flight while something else happens), not a fault."""

    @model_validator(mode="after")
    def _check_statuses(self) -> FaultSettings:
        bad = [s for s in self.error_statuses if not 500 <= s <= 599]
        if bad or not self.error_statuses:
            raise ValueError(f"error_statuses must be 5xx codes, got {self.error_statuses}")
        return self


class StreamSettings(FaultSettings):
    rate_limit_requests: int = Field(1200, ge=1)
    rate_limit_window_s: float = Field(300.0, gt=0)
    rate_limit_penalty_s: float = Field(300.0, ge=0)
    """Cloudflare blocks every call for this long once the limit is exceeded."""
    required_account: str | None = None

    # Timelines of videos registered without an explicit one (derived from uid + seed).
    pre_queue_s: tuple[float, float] = (5.0, 30.0)
    """pendingupload/downloading -> queued."""
    queued_s: tuple[float, float] = (5.0, 60.0)
    processing_s: tuple[float, float] = (30.0, 300.0)
    duration_s: tuple[float, float] = (5.0, 1800.0)
    pendingupload_share: float = Field(0.05, ge=0, le=1)
    downloading_share: float = Field(0.05, ge=0, le=1)
    error_share: float = Field(0.1, ge=0, le=1)
    legacy_error_spelling_share: float = Field(0.2, ge=0, le=1)
    """Share of errored videos that spell it ``errReasonCode``/``errReasonText``."""

    # Webhook deliveries (``PUT /accounts/{account_id}/stream/webhook``).
    webhook_secret: str | None = None
    """The secret a webhook registration hands out; None means ``EMULATOR_WEBHOOK_SECRET``."""
    webhook_max_attempts: int = Field(5, ge=1)
    """Deliveries of one video's outcome before giving up on it (the first one included)."""
    webhook_retry_s: float = Field(1.0, ge=0)
    """Emulated seconds before the first retry of a refused delivery; doubled for each next one."""
    webhooks_enabled: bool = True
    webhook_drop_rate: float = Field(0.0, ge=0, le=1)
    """Share of videos whose webhook is lost on the way: never arrives, though Stream counts it
    sent. Chosen by the uid, so the same videos every time (the safety net's benchmarks)."""


class ResendSettings(FaultSettings):
    rate_limit_requests: int = Field(5, ge=1)
    rate_limit_window_s: float = Field(1.0, gt=0)
    daily_quota: int | None = Field(None, ge=0)
    monthly_quota: int | None = Field(None, ge=0)
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0)
    in_flight_timeout_s: float = Field(60.0, gt=0)
    """An idempotency key left in flight longer than this (its process died) may be taken over."""


class EmulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = 0
    """Seeds the fault RNG (per request: seed, service and the request's sequence number) and the
    timelines derived for videos, so a run can be replayed."""
    clock_offset_s: float = 0.0
    """Added to the wall clock: tests and demos move time forward without sleeping."""
    frozen_clock_s: float | None = None
    """When set, emulated time stands still at this instant (seconds since the epoch; plus
    ``clock_offset_s``) instead of following the wall clock, in every process: only
    ``advance_clock`` moves it. For tests whose outcome must not depend on how long they take."""
    stream: StreamSettings = Field(default_factory=StreamSettings)
    resend: ResendSettings = Field(default_factory=ResendSettings)


# Plain-text conveniences accepted in a patch, stored as digests.
_TOKEN_ALIASES = {
    "require_token": "required_token_sha256",
    "require_key": "required_token_sha256",
}
_REVOKE_ALIASES = ("revoke_token", "revoke_key")


def _normalise_service_patch(patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(patch)
    for alias, field in _TOKEN_ALIASES.items():
        if alias in out:
            token = out.pop(alias)
            out[field] = None if token in (None, "") else token_digest(str(token))
    for alias in _REVOKE_ALIASES:
        if alias in out:
            token = out.pop(alias)
            out.setdefault("revoked_tokens_sha256", [])
            out["revoked_tokens_sha256"] = [*out["revoked_tokens_sha256"], token_digest(str(token))]
    if "require_account" in out:
        out["required_account"] = out.pop("require_account") or None
    return out


def merge_config(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``patch`` into ``base`` (plain dicts), normalising plain-text tokens to digests.

    Revocations accumulate: revoking a second token keeps the first revoked.
    """
    merged: dict[str, Any] = {
        k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()
    }
    for key, value in patch.items():
        if key in ("stream", "resend") and isinstance(value, Mapping):
            service_patch = _normalise_service_patch(value)
            current = dict(merged.get(key) or {})
            if "revoked_tokens_sha256" in service_patch and any(
                alias in value for alias in _REVOKE_ALIASES
            ):
                previous = list(current.get("revoked_tokens_sha256") or [])
                added = [t for t in service_patch["revoked_tokens_sha256"] if t not in previous]
                service_patch["revoked_tokens_sha256"] = previous + added
            current.update(service_patch)
            merged[key] = current
        else:
            merged[key] = value
    return merged


def parse_config(raw: Mapping[str, Any]) -> EmulatorConfig:
    return EmulatorConfig.model_validate(dict(raw))


def public_view(config: EmulatorConfig) -> dict[str, Any]:
    """The config as the admin route shows it (digests are not secrets, but say what they mean)."""
    data = config.model_dump(mode="json")
    for service in ("stream", "resend"):
        section = data[service]
        section["token_required"] = section["required_token_sha256"] is not None
        section["revoked_tokens"] = len(section["revoked_tokens_sha256"])
    # The webhook secret is stored in plain text (deliveries are signed with it): say only if set.
    data["stream"]["webhook_secret_configured"] = data["stream"].pop("webhook_secret") is not None
    return data
