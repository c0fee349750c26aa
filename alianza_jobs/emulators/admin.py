"""Admin routes under ``/_emulator``: what the Python API does, for a process on the other side of
a socket (tests against ``alianza-jobs emulate``, benchmarks, a developer with curl).

No authentication: the emulator serves loopback for development and tests only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from alianza_jobs.emulators import resend, resend_store, stream_videos
from alianza_jobs.emulators.config import public_view
from alianza_jobs.emulators.pipeline import json_response
from alianza_jobs.emulators.state import StateStore


def _bad_request(message: str) -> Response:
    return json_response({"error": message}, 400)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    return json.loads(raw) if raw.strip() else {}


class AdminRoutes:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def health(self, request: Request) -> Response:
        config = await self.store.call(self.store.config)
        return json_response(
            {"ok": True, "state_dir": str(self.store.state_dir), "now": self.store.now(config)}
        )

    async def get_config(self, request: Request) -> Response:
        config = await self.store.call(self.store.config)
        return json_response(public_view(config))

    async def patch_config(self, request: Request) -> Response:
        try:
            patch = await _json_body(request)
            if not isinstance(patch, dict):
                return _bad_request("expected a JSON object")
            config = await self.store.call(self.store.update_config, patch)
        except (ValueError, ValidationError) as exc:
            return _bad_request(str(exc))
        return json_response(public_view(config))

    async def reset(self, request: Request) -> Response:
        keep = request.query_params.get("keep_config", "").lower() in ("1", "true")
        await self.store.call(lambda: self.store.reset(keep_config=keep))
        return json_response({"ok": True})

    async def advance_clock(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            seconds = float(body["seconds"])
        except (ValueError, KeyError, TypeError):
            return _bad_request('expected {"seconds": N}')
        now = await self.store.call(self.store.advance_clock, seconds)
        return json_response({"now": now})

    async def counters(self, request: Request) -> Response:
        counters = await self.store.call(self.store.counters)
        rows = [
            {"service": c.service, "endpoint": c.endpoint, "status": c.status, "count": c.count}
            for c in counters
        ]
        return json_response({"counters": rows, "total": sum(c.count for c in counters)})

    async def reset_counters(self, request: Request) -> Response:
        await self.store.call(self.store.reset_counters)
        return json_response({"ok": True})

    async def add_videos(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            videos = body.get("videos") if isinstance(body, dict) else body
            if not isinstance(videos, list):
                return _bad_request('expected a list of videos or {"videos": [...]}')
            if_exists = body.get("if_exists", "replace") if isinstance(body, dict) else "replace"
            if if_exists not in ("replace", "keep"):
                return _bad_request("if_exists must be replace or keep")
            keep = if_exists == "keep"
            uids = await self.store.call(
                stream_videos.add_videos,
                self.store,
                videos,
                if_exists="keep" if keep else "replace",
            )
        except (ValueError, TypeError) as exc:
            return _bad_request(str(exc))
        return json_response({"uids": uids})

    async def seed_videos(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            count = int(body["count"])
            seed = int(body.get("seed", 0))
            spacing = float(body.get("spacing_s", 60.0))
        except (ValueError, KeyError, TypeError):
            return _bad_request('expected {"count": N, "seed": S, "spacing_s": X}')
        uids = await self.store.call(
            lambda: stream_videos.seed_videos(self.store, count, seed=seed, spacing_s=spacing)
        )
        return json_response({"count": len(uids), "first": uids[:1], "last": uids[-1:]})

    async def describe_video(self, request: Request) -> Response:
        record = await self.store.call(
            stream_videos.describe, self.store, request.path_params["uid"]
        )
        if record is None:
            return json_response({"error": "unknown video"}, 404)
        return json_response(record)

    async def delete_video(self, request: Request) -> Response:
        deleted = await self.store.call(
            stream_videos.delete_video, self.store, request.path_params["uid"]
        )
        return json_response({"deleted": deleted})

    async def inbox(self, request: Request) -> Response:
        to = request.query_params.get("to") or None

        def collect() -> dict[str, Any]:
            return {
                "emails": [e.to_json() for e in resend_store.inbox(self.store, to=to)],
                "counts_by_idempotency_key": resend_store.counts_by_idempotency_key(self.store),
                "counts_by_message": resend_store.counts_by_message(self.store),
            }

        return json_response(await self.store.call(collect))

    async def clear_inbox(self, request: Request) -> Response:
        await self.store.call(lambda: resend.ResendEmulator(self.store.state_dir).clear_inbox())
        return json_response({"ok": True})

    async def idempotency(self, request: Request) -> Response:
        entries = await self.store.call(
            resend_store.idempotency_entries, self.store, request.path_params["key"]
        )
        return json_response({"entries": entries})

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/config", self.get_config, methods=["GET"]),
            Route("/config", self.patch_config, methods=["PATCH", "POST"]),
            Route("/reset", self.reset, methods=["POST"]),
            Route("/clock/advance", self.advance_clock, methods=["POST"]),
            Route("/counters", self.counters, methods=["GET"]),
            Route("/counters", self.reset_counters, methods=["DELETE"]),
            Route("/stream/videos", self.add_videos, methods=["POST"]),
            Route("/stream/seed", self.seed_videos, methods=["POST"]),
            Route("/stream/videos/{uid}", self.describe_video, methods=["GET"]),
            Route("/stream/videos/{uid}", self.delete_video, methods=["DELETE"]),
            Route("/resend/inbox", self.inbox, methods=["GET"]),
            Route("/resend/inbox", self.clear_inbox, methods=["DELETE"]),
            Route("/resend/idempotency/{key:path}", self.idempotency, methods=["GET"]),
        ]
