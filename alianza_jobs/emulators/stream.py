"""Cloudflare Stream emulator: videos whose processing advances with (emulated) time.

Each video has a timeline fixed when it is registered: ``queued_us`` (pendingupload/downloading ->
queued), ``inprogress_us`` and ``final_us``, an outcome (ready or error), a duration and an error
reason. Unless given, they are derived from the uid and the config's random seed, so the same registration
gives the same video everywhere. The state a client sees is a pure function of the timeline and the
time of the request, which is why any process can answer for any video, and why the list endpoint
can filter on ``status`` in SQL.
More: docs/platform.md, "alianza_jobs.emulators.stream".
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.config import (
    EmulatorConfig,
    FaultSettings,
    StreamSettings,
    token_digest,
)
from alianza_jobs.emulators.constants import EMULATOR_ACCOUNT_ID
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

SERVICE = "stream"
MAX_LIMIT = 1000
UID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

# Cloudflare's error codes. 971 (rate limit) and 10000 (authentication) are documented and seen in
# the wild; the Stream-specific "not found" code could not be confirmed against a real response:
# clients must branch on the HTTP status (as the clients do), never on these numbers.
CODE_RATE_LIMITED = 971
CODE_AUTH = 10000
CODE_NOT_FOUND = 10003
CODE_BAD_REQUEST = 10002
CODE_INTERNAL = 10001
CODE_NO_ROUTE = 7000

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


def _state_at(row: sqlite3.Row, now_us: int) -> str:
    if now_us < row["queued_us"]:
        return str(row["initial_state"])
    if now_us < row["inprogress_us"]:
        return "queued"
    if now_us < row["final_us"]:
        return "inprogress"
    return str(row["outcome"])


def _customer_code(account_id: str) -> str:
    return hashlib.sha256(account_id.encode()).hexdigest()[:16]


def render_video(row: sqlite3.Row, now_us: int, account_id: str) -> dict[str, Any]:
    """One video as ``GET /accounts/{account_id}/stream/{uid}`` returns it at ``now_us``."""
    uid = row["uid"]
    state = _state_at(row, now_us)
    base = f"https://customer-{_customer_code(account_id)}.cloudflarestream.com/{uid}"
    transitions = [row["created_us"], row["started_us"]]
    for boundary in ("queued_us", "inprogress_us", "final_us"):
        if row[boundary] <= now_us:
            transitions.append(row[boundary])
    modified_us = max(transitions)
    uploaded = state not in ("pendingupload", "downloading")
    known = state in ("inprogress", "ready")

    status: dict[str, Any] = {"state": state}
    if state == "inprogress":
        span = max(1, row["final_us"] - row["inprogress_us"])
        pct = min(99.999999, 100.0 * (now_us - row["inprogress_us"]) / span)
        status.update(pctComplete=f"{pct:.6f}", step="encoding")
    elif state == "ready":
        status["pctComplete"] = "100.000000"
    if state == "error":
        status["step"] = "encoding"
        if row["legacy_error_spelling"]:
            status.update(errReasonCode=row["error_code"], errReasonText=row["error_text"])
        else:
            status.update(errorReasonCode=row["error_code"], errorReasonText=row["error_text"])
    else:
        status.update(errorReasonCode="", errorReasonText="")

    return {
        "uid": uid,
        "creator": row["creator"],
        "thumbnail": f"{base}/thumbnails/thumbnail.jpg",
        "thumbnailTimestampPct": 0,
        "readyToStream": state == "ready",
        "readyToStreamAt": rfc3339.format_us(row["final_us"]) if state == "ready" else None,
        "status": status,
        "meta": json.loads(row["meta"]),
        "created": rfc3339.format_us(row["created_us"]),
        "modified": rfc3339.format_us(modified_us),
        "scheduledDeletion": None,
        "size": row["size"] if uploaded else 0,
        "preview": f"{base}/watch",
        "allowedOrigins": [],
        "requireSignedURLs": False,
        "uploaded": rfc3339.format_us(row["queued_us"]) if uploaded else None,
        "uploadExpiry": (
            rfc3339.format_us(row["created_us"] + 3_600_000_000)
            if state == "pendingupload"
            else None
        ),
        "maxSizeBytes": None,
        "maxDurationSeconds": None,
        "duration": row["duration"] if known else -1,
        "input": {
            "width": row["width"] if known else -1,
            "height": row["height"] if known else -1,
        },
        "playback": {"hls": f"{base}/manifest/video.m3u8", "dash": f"{base}/manifest/video.mpd"},
        "watermark": None,
        "clippedFrom": None,
        "liveInput": None,
    }


def envelope(result: Any, **extra: Any) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": [], **extra}


def failure(
    status: int, code: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response(
        {
            "result": None,
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
        },
        status,
        headers,
    )


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    after_us: int | None = None
    before_us: int | None = None
    asc: bool = False
    limit: int = MAX_LIMIT
    include_counts: bool = False
    creator: str | None = None
    ids: tuple[str, ...] = ()
    search: str | None = None
    video_name: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ListQuery:
        status = params.get("status") or None
        if status is not None and status not in STATES:
            raise BadRequest(f"status must be one of {', '.join(STATES)}")
        try:
            after = params.get("after") or params.get("start")
            before = params.get("before") or params.get("end")
            after_us = rfc3339.parse(after) if after else None
            before_us = rfc3339.parse(before) if before else None
        except ValueError:
            raise BadRequest("after/before must be RFC 3339 date-times") from None
        raw_limit = params.get("limit")
        try:
            limit = int(raw_limit) if raw_limit else MAX_LIMIT
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        ids = tuple(i.strip() for i in (params.get("id") or "").split(",") if i.strip())
        return cls(
            status=status,
            after_us=after_us,
            before_us=before_us,
            asc=_parse_bool(params, "asc"),
            limit=min(max(limit, 1), MAX_LIMIT),
            include_counts=_parse_bool(params, "include_counts"),
            creator=params.get("creator") or None,
            ids=ids,
            search=params.get("search") or None,
            video_name=params.get("video_name") or None,
        )


def _parse_bool(params: Mapping[str, str], name: str) -> bool:
    raw = (params.get(name) or "").strip().lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise BadRequest(f"{name} must be true or false")


def _where(query: ListQuery, now_us: int) -> tuple[str, list[Any]]:
    clauses = ["deleted_us IS NULL"]
    args: list[Any] = []
    if query.after_us is not None:
        clauses.append("created_us > ?")
        args.append(query.after_us)
    if query.before_us is not None:
        clauses.append("created_us < ?")
        args.append(query.before_us)
    if query.creator is not None:
        clauses.append("creator = ?")
        args.append(query.creator)
    if query.ids:
        clauses.append(f"uid IN ({','.join('?' * len(query.ids))})")
        args.extend(query.ids)
    if query.search is not None:
        clauses.append("json_extract(meta, '$.name') LIKE ?")
        args.append(f"%{query.search}%")
    if query.video_name is not None:
        clauses.append("json_extract(meta, '$.name') = ?")
        args.append(query.video_name)
    status = query.status
    if status in ("pendingupload", "downloading"):
        clauses.append("initial_state = ? AND ? < queued_us")
        args += [status, now_us]
    elif status == "queued":
        clauses.append("? < inprogress_us AND (initial_state = 'queued' OR ? >= queued_us)")
        args += [now_us, now_us]
    elif status == "inprogress":
        clauses.append("? >= inprogress_us AND ? < final_us")
        args += [now_us, now_us]
    elif status in ("ready", "error"):
        clauses.append("? >= final_us AND outcome = ?")
        args += [now_us, status]
    elif status == "live-inprogress":
        clauses.append("0")
    return " AND ".join(clauses), args


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


def get_row(store: StateStore, uid: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = (
        store.connection()
        .execute("SELECT * FROM videos WHERE uid = ? AND deleted_us IS NULL", (uid,))
        .fetchone()
    )
    return row


def list_rows(
    store: StateStore, query: ListQuery, now_us: int
) -> tuple[list[sqlite3.Row], int | None]:
    where, args = _where(query, now_us)
    order = "ASC" if query.asc else "DESC"
    with store.read() as conn:
        rows = conn.execute(
            f"SELECT * FROM videos WHERE {where} "  # noqa: S608 - clauses are ours, values bound
            f"ORDER BY created_us {order}, uid {order} LIMIT ?",
            [*args, query.limit],
        ).fetchall()
        total = None
        if query.include_counts:
            total = conn.execute(
                f"SELECT COUNT(*) FROM videos WHERE {where}",  # noqa: S608
                args,
            ).fetchone()[0]
    return rows, total


def describe(store: StateStore, uid: str) -> dict[str, Any] | None:
    """The stored record with its timeline (for tests and the admin route), deleted or not."""
    row = store.connection().execute("SELECT * FROM videos WHERE uid = ?", (uid,)).fetchone()
    if row is None:
        return None
    now_us = rfc3339.to_us(store.now())
    out = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a Mapping
    out["meta"] = json.loads(row["meta"])
    out["state_now"] = _state_at(row, now_us)
    for key in ("created_us", "started_us", "queued_us", "inprogress_us", "final_us", "deleted_us"):
        if out[key] is not None:
            out[key.removesuffix("_us")] = rfc3339.format_us(out[key])
    return out


# -- the HTTP side -----------------------------------------------------------------------------


class StreamService(EmulatedService):
    name = SERVICE

    def settings(self, config: EmulatorConfig) -> FaultSettings:
        return config.stream

    def penalty_s(self, config: EmulatorConfig) -> float | None:
        return config.stream.rate_limit_penalty_s

    def authenticate(self, request: Request, config: EmulatorConfig) -> str | AuthFailure:
        settings = config.stream
        token = bearer_token(request) or request.headers.get("x-auth-key") or None
        if token is None:
            return AuthFailure(failure(401, CODE_AUTH, "Authentication error"))
        digest = token_digest(token)
        required = settings.required_token_sha256
        if (
            required is not None and digest != required
        ) or digest in settings.revoked_tokens_sha256:
            return AuthFailure(failure(401, CODE_AUTH, "Authentication error"))
        account = request.path_params.get("account_id")
        if settings.required_account is not None and account != settings.required_account:
            return AuthFailure(failure(403, CODE_AUTH, "Authentication error"))
        return token

    def rate_limited(self, admission: Admission) -> Response:
        return failure(
            429,
            CODE_RATE_LIMITED,
            "Please wait and consider throttling your request speed",
            {"retry-after": str(admission.retry_after_s or 1)},
        )

    def server_error(self, status: int) -> Response:
        if status == 500:
            return failure(500, CODE_INTERNAL, "Internal Server Error")
        return gateway_error_page(status)

    async def get_video(self, request: Request) -> Response:
        return await self.handle(
            request, "GET /accounts/{account_id}/stream/{uid}", self._get_video
        )

    async def _get_video(self, request: Request, ctx: RequestContext) -> Response:
        uid = str(request.path_params["uid"])
        row = await self.store.call(get_row, self.store, uid)
        if row is None:
            return failure(404, CODE_NOT_FOUND, "Not Found")
        account = str(request.path_params["account_id"])
        return json_response(envelope(render_video(row, rfc3339.to_us(ctx.now), account)))

    async def list_videos(self, request: Request) -> Response:
        return await self.handle(request, "GET /accounts/{account_id}/stream", self._list_videos)

    async def _list_videos(self, request: Request, ctx: RequestContext) -> Response:
        try:
            query = ListQuery.from_params(request.query_params)
        except BadRequest as exc:
            return failure(400, CODE_BAD_REQUEST, str(exc))
        now_us = rfc3339.to_us(ctx.now)
        rows, total = await self.store.call(list_rows, self.store, query, now_us)
        account = str(request.path_params["account_id"])
        extra: dict[str, Any] = {"range": len(rows)}
        if total is not None:
            extra["total"] = total
        return json_response(envelope([render_video(r, now_us, account) for r in rows], **extra))

    async def no_route(self, request: Request) -> Response:
        return failure(400, CODE_NO_ROUTE, "No route for that URI")

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/accounts/{account_id}/stream", self.list_videos, methods=["GET"]),
            Route("/accounts/{account_id}/stream/{uid}", self.get_video, methods=["GET"]),
            Route(
                "/{path:path}",
                self.no_route,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]


# -- the Python API ----------------------------------------------------------------------------


class StreamEmulator(EmulatorControl):
    """Register, delete and inspect emulated videos; configure the Stream side.

    Usable from any process: it works on the state directory, like the ASGI app does.
    """

    def add_videos(
        self,
        videos: Iterable[VideoSpec | Mapping[str, Any] | str],
        *,
        if_exists: Literal["replace", "keep"] = "replace",
    ) -> list[str]:
        """Register videos (a uid, a :class:`VideoSpec` or its fields as a dict); returns uids.

        ``if_exists="keep"`` leaves an already registered uid (and its timeline) untouched.
        """
        return add_videos(self.store, videos, if_exists=if_exists)

    def seed(
        self,
        count: int,
        *,
        seed: int = 0,
        first_index: int = 0,
        created_start: datetime | None = None,
        spacing_s: float = 60.0,
    ) -> list[str]:
        """Register ``count`` generated videos (see :func:`seed_videos`); returns their uids."""
        return seed_videos(
            self.store,
            count,
            seed=seed,
            first_index=first_index,
            created_start=created_start,
            spacing_s=spacing_s,
        )

    def delete(self, uid: str) -> bool:
        return delete_video(self.store, uid)

    def get(self, uid: str, *, account_id: str = EMULATOR_ACCOUNT_ID) -> dict[str, Any] | None:
        """The video as the API would return it now (``None`` when unknown or deleted)."""
        row = get_row(self.store, uid)
        if row is None:
            return None
        return render_video(row, rfc3339.to_us(self.store.now()), account_id)

    def state(self, uid: str) -> str | None:
        video = self.get(uid)
        return None if video is None else str(video["status"]["state"])

    def describe(self, uid: str) -> dict[str, Any] | None:
        return describe(self.store, uid)

    def count(self) -> int:
        row = (
            self.store.connection()
            .execute("SELECT COUNT(*) FROM videos WHERE deleted_us IS NULL")
            .fetchone()
        )
        return int(row[0])

    def configure(self, **settings: Any) -> StreamSettings:
        """Change Stream settings for every process (e.g. ``error_rate=0.2``, ``require_token=``)."""
        return self.store.update_config({"stream": settings}).stream
