"""What Stream's answer about a video means for the queued rows that name it: a verdict per video
(ready with its duration, error with its reason, still processing, or a failed check), and the
bulk write those verdicts plan for a batch of leased rows, dead letters included. Pure: no
database, no API."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from alianza_jobs.clients.http import ApiError, PermanentApiError
from alianza_jobs.clients.stream import StreamVideo
from alianza_jobs.db.models import DeadLetterSource, StreamingStatus

PROVIDER = "cloudflare"
NOT_FOUND_REASON = "not found in Cloudflare Stream (the video was deleted or never existed)"

Outcome = Literal["ready", "error", "processing", "failed"]


@dataclass(frozen=True)
class Verdict:
    """What Stream's answer means for the rows of one uid."""

    outcome: Outcome
    duration: float | None = None
    reason: str | None = None
    not_found: bool = False


NOT_FOUND = Verdict("error", reason=NOT_FOUND_REASON, not_found=True)


def verdict_for(video: StreamVideo) -> Verdict:
    """The queue's reading of one video. Lenient where the queue can be: the client flags an
    unknown state or a non-numeric duration as a parse error, but neither stops us from knowing
    what to do with the row (leave it queued; store no duration). Only a video without a state is
    malformed for our purposes."""
    state = video.state
    if not state:
        return Verdict("failed", reason=f"malformed video: {video.parse_error or 'no state'}")
    if state == "ready":
        duration = video.duration
        if duration is not None and not math.isfinite(duration):
            duration = None
        return Verdict("ready", duration=duration)
    if state == "error":
        return Verdict(
            "error", reason=video.error_reason or "Stream reported an error without a reason"
        )
    # pendingupload, downloading, queued, inprogress, live-inprogress, or a state new to us.
    return Verdict("processing")


def verdict_for_error(error: ApiError) -> Verdict | None:
    """A per-video GET that failed: a verdict for the row, or None to leave it for a later tick."""
    if isinstance(error, PermanentApiError):
        if error.code == "not_found":
            return NOT_FOUND
        return Verdict("failed", reason=str(error))
    return None


@dataclass(frozen=True)
class LeasedRow:
    id: str  # the platform row's id, as text
    external_id: str
    attempts: int


@dataclass
class PlannedWrite:
    """The bulk write for one batch: row changes, dead letters, and the outcome of each row."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    failures: list[tuple[LeasedRow, str, bool]] = field(default_factory=list)


def plan_write(
    rows: Sequence[LeasedRow],
    verdicts: Mapping[str, Verdict],
    *,
    now: datetime,
    max_attempts: int,
) -> PlannedWrite:
    """Row changes for ``write_rows`` (pure, so the rules are testable without a database)."""
    plan = PlannedWrite()
    for row in rows:
        verdict = verdicts[row.external_id]
        change: dict[str, Any] = {"id": row.id, "checked_at": now}
        if verdict.outcome == "ready":
            change |= {
                "status": StreamingStatus.READY.value,
                "duration": verdict.duration,
                "error_reason": None,
            }
            label = "ready"
        elif verdict.outcome == "error":
            change |= {"status": StreamingStatus.ERROR.value, "error_reason": verdict.reason}
            label = "not_found" if verdict.not_found else "errored"
        elif verdict.outcome == "processing":
            label = "still_processing"
        else:
            attempts = row.attempts + 1
            change["attempts"] = attempts
            reason = verdict.reason or "unknown failure"
            dead = attempts >= max_attempts
            if dead:
                change |= {
                    "status": StreamingStatus.ERROR.value,
                    "error_reason": f"gave up after {attempts} failed attempts: {reason}"[:2000],
                }
                plan.dead_letters.append(
                    {
                        "source": DeadLetterSource.STREAMINGS.value,
                        "source_id": row.id,
                        "payload": {
                            "streaming_id": row.id,
                            "external_id": row.external_id,
                            "provider": PROVIDER,
                            "attempts": attempts,
                        },
                        "error": reason[:2000],
                        "failed_at": now,
                    }
                )
            label = "dead_lettered" if dead else "failed"
            plan.failures.append((row, reason, dead))
        plan.changes.append(change)
        plan.labels[row.id] = label
    return plan
