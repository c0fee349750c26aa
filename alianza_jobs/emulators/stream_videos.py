"""The emulated Stream videos: what a registration stores and how its state advances. Each video
has a timeline fixed when it is registered: ``queued_us`` (pendingupload/downloading -> queued),
``inprogress_us`` and ``final_us``, an outcome (ready or error), a duration and an error reason.
Unless given, they are derived from the uid and the config's random seed, so the same registration
gives the same video everywhere. The state a client sees is a pure function of the timeline and the
time of the request, which is why any process can answer for any video, and why the list endpoint
can filter on ``status`` in SQL (docs/platform.md, "alianza_jobs.emulators.stream").
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.config import StreamSettings
from alianza_jobs.emulators.state import StateStore

UID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

InitialState = Literal["pendingupload", "downloading", "queued"]
Outcome = Literal["ready", "error"]
STATES = (
    "pendingupload",
    "downloading",
    "queued",
    "inprogress",
    "ready",
    "error",
    "live-inprogress",
)

# From Cloudflare's Stream webhook/error documentation.
ERROR_REASONS: tuple[tuple[str, str], ...] = (
    ("ERR_NON_VIDEO", "The file was not recognized as a valid video file."),
    ("ERR_DURATION_EXCEED_CONSTRAINT", "The video duration exceeds the constraints defined."),
    ("ERR_FETCH_ORIGIN_ERROR", "The video failed to download from the URL."),
    ("ERR_MALFORMED_VIDEO", "The video is a valid file but contains corrupt data."),
    ("ERR_DURATION_TOO_SHORT", "The video's duration is shorter than 0.1 seconds."),
    ("ERR_UNKNOWN", "Stream could not automatically determine why the video errored."),
)
_RESOLUTIONS = ((1920, 1080), (1280, 720), (854, 480), (1080, 1920), (3840, 2160))


@dataclass(frozen=True)
class VideoSpec:
    """A video to register. Anything left ``None`` is derived from the uid and the random seed.

    Offsets are seconds after ``started`` (the moment processing began; default: registration).
    ``created`` is what the API reports and lists by; it may be far in the past (demo data)
    while the timeline still starts now, so the demo shows videos becoming ready.
    """

    uid: str | None = None
    created: datetime | None = None
    started: datetime | None = None
    creator: str | None = None
    meta: Mapping[str, Any] | None = None
    initial_state: InitialState | None = None
    queued_after_s: float | None = None
    inprogress_after_s: float | None = None
    final_after_s: float | None = None
    outcome: Outcome | None = None
    duration: float | None = None
    error_reason_code: str | None = None
    error_reason_text: str | None = None
    legacy_error_spelling: bool | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> VideoSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown video fields: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = dict(data)
        for name in ("created", "started"):
            raw = values.get(name)
            if isinstance(raw, str):
                values[name] = rfc3339.from_us(rfc3339.parse(raw))
        return cls(**values)


@dataclass(frozen=True)
class _Row:
    uid: str
    created_us: int
    started_us: int
    queued_us: int
    inprogress_us: int
    final_us: int
    initial_state: str
    outcome: str
    duration: float
    error_code: str | None
    error_text: str | None
    legacy_error_spelling: int
    size: int
    width: int
    height: int
    creator: str | None
    meta: str


def _timeline(spec: VideoSpec, uid: str, now_us: int, seed: int, cfg: StreamSettings) -> _Row:
    rng = random.Random(f"{seed}:video:{uid}")
    # Fixed draw order, whatever the spec overrides, so overriding one value leaves the rest alone.
    kind, pre, queued, processing = (
        rng.random(),
        rng.uniform(*cfg.pre_queue_s),
        rng.uniform(*cfg.queued_s),
        rng.uniform(*cfg.processing_s),
    )
    errored, legacy = rng.random() < cfg.error_share, rng.random() < cfg.legacy_error_spelling_share
    duration = round(rng.uniform(*cfg.duration_s), 3)
    reason = rng.choice(ERROR_REASONS)
    width, height = rng.choice(_RESOLUTIONS)
    bitrate = rng.uniform(150_000, 600_000)

    initial: str
    explicit = (spec.queued_after_s, spec.inprogress_after_s, spec.final_after_s)
    if spec.initial_state is not None:
        initial = spec.initial_state
    elif any(x is not None for x in explicit):
        initial = "queued"  # a caller spelling out the timeline means it as given
    elif kind < cfg.pendingupload_share:
        initial = "pendingupload"
    elif kind < cfg.pendingupload_share + cfg.downloading_share:
        initial = "downloading"
    else:
        initial = "queued"
    if initial not in ("pendingupload", "downloading", "queued"):
        raise ValueError(f"initial_state must be pendingupload, downloading or queued: {initial!r}")
    # Given offsets win; derived ones are squeezed between them so the order always holds.
    queued_after = 0.0 if initial == "queued" else spec.queued_after_s
    inprogress_after = spec.inprogress_after_s
    final_after = spec.final_after_s
    if queued_after is None:
        queued_after = min([pre, *(x for x in (inprogress_after, final_after) if x is not None)])
    if inprogress_after is None:
        inprogress_after = queued_after + queued
        if final_after is not None:
            inprogress_after = max(queued_after, min(inprogress_after, final_after))
    if final_after is None:
        final_after = inprogress_after + processing
    if not 0 <= queued_after <= inprogress_after <= final_after:
        raise ValueError(
            f"video {uid}: need 0 <= queued_after_s <= inprogress_after_s <= final_after_s, got "
            f"{queued_after}, {inprogress_after}, {final_after}"
        )
    outcome = spec.outcome or ("error" if errored else "ready")
    if outcome not in ("ready", "error"):
        raise ValueError(f"outcome must be ready or error: {outcome!r}")
    started_us = rfc3339.to_us(spec.started) if spec.started is not None else now_us
    created_us = rfc3339.to_us(spec.created) if spec.created is not None else started_us
    duration = spec.duration if spec.duration is not None else duration
    legacy_spelling = (
        spec.legacy_error_spelling if spec.legacy_error_spelling is not None else legacy
    )
    error_code = error_text = None
    if outcome == "error":
        error_code = spec.error_reason_code or reason[0]
        error_text = spec.error_reason_text or dict(ERROR_REASONS).get(error_code, reason[1])
    return _Row(
        uid=uid,
        created_us=created_us,
        started_us=started_us,
        queued_us=started_us + round(queued_after * 1e6),
        inprogress_us=started_us + round(inprogress_after * 1e6),
        final_us=started_us + round(final_after * 1e6),
        initial_state=initial,
        outcome=outcome,
        duration=float(duration),
        error_code=error_code,
        error_text=error_text,
        legacy_error_spelling=int(bool(legacy_spelling)),
        size=int(duration * bitrate),
        width=width,
        height=height,
        creator=spec.creator,
        meta=json.dumps(dict(spec.meta or {"name": f"{uid[:8]}.mp4"})),
    )


def state_at(row: sqlite3.Row, now_us: int) -> str:
    if now_us < row["queued_us"]:
        return str(row["initial_state"])
    if now_us < row["inprogress_us"]:
        return "queued"
    if now_us < row["final_us"]:
        return "inprogress"
    return str(row["outcome"])


# -- state operations (blocking; run in a worker thread from the ASGI side) -------------------------


def add_videos(
    store: StateStore,
    videos: Iterable[VideoSpec | Mapping[str, Any] | str],
    *,
    if_exists: Literal["replace", "keep"] = "replace",
) -> list[str]:
    config = store.config()
    now_us = rfc3339.to_us(store.now(config))
    rows: list[_Row] = []
    for item in videos:
        if isinstance(item, str):
            spec = VideoSpec(uid=item)
        elif isinstance(item, VideoSpec):
            spec = item
        else:
            spec = VideoSpec.from_mapping(item)
        uid = (spec.uid or uuid.uuid4().hex).lower()
        if not UID_PATTERN.match(uid):
            raise ValueError(f"video uid must be 32 hex characters: {uid!r}")
        rows.append(_timeline(spec, uid, now_us, config.seed, config.stream))
    conflict = (
        "DO NOTHING"
        if if_exists == "keep"
        else "DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
        + ", deleted_us = NULL"
    )
    with store.write() as conn:
        conn.executemany(
            f"INSERT INTO videos ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "  # noqa: S608
            f"ON CONFLICT (uid) {conflict}",
            [tuple(getattr(r, c) for c in _COLUMNS) for r in rows],
        )
    return [r.uid for r in rows]


_COLUMNS = tuple(f.name for f in fields(_Row))


def seed_videos(
    store: StateStore,
    count: int,
    *,
    seed: int = 0,
    first_index: int = 0,
    created_start: datetime | None = None,
    spacing_s: float = 60.0,
) -> list[str]:
    """Register ``count`` generated videos, ``spacing_s`` apart by creation time, starting at
    ``created_start`` (default: so that the last is created now).

    Video number ``i`` always gets the same uid for a seed, so seeding more later
    (``first_index=already_there``) adds videos instead of re-registering the first ones.
    """
    now_us = rfc3339.to_us(store.now())
    step_us = round(spacing_s * 1e6)
    start_us = (
        rfc3339.to_us(created_start) if created_start is not None else now_us - count * step_us
    )
    specs = (
        VideoSpec(
            uid=hashlib.sha256(f"{seed}:video:{first_index + i}".encode()).hexdigest()[:32],
            created=rfc3339.from_us(start_us + i * step_us),
        )
        for i in range(count)
    )
    return add_videos(store, specs)


def delete_video(store: StateStore, uid: str) -> bool:
    now_us = rfc3339.to_us(store.now())
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE videos SET deleted_us = ? WHERE uid = ? AND deleted_us IS NULL", (now_us, uid)
        )
        return cur.rowcount > 0


def describe(store: StateStore, uid: str) -> dict[str, Any] | None:
    """The stored record with its timeline (for tests and the admin route), deleted or not."""
    row = store.connection().execute("SELECT * FROM videos WHERE uid = ?", (uid,)).fetchone()
    if row is None:
        return None
    now_us = rfc3339.to_us(store.now())
    out = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a Mapping
    out["meta"] = json.loads(row["meta"])
    out["state_now"] = state_at(row, now_us)
    for key in ("created_us", "started_us", "queued_us", "inprogress_us", "final_us", "deleted_us"):
        if out[key] is not None:
            out[key.removesuffix("_us")] = rfc3339.format_us(out[key])
    return out
