"""The Stream list endpoint's query: its parameters parsed (``status``, ``after``/``before``,
``asc``, ``limit``, ``include_counts``, ``creator``, ``id``, ``search``, ``video_name``) and turned
into SQL over the videos table, with the status filter computed from each video's timeline at the
time of the request; and the lookup of one live video by uid.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.state import StateStore
from alianza_jobs.emulators.stream_videos import STATES

MAX_LIMIT = 1000


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
