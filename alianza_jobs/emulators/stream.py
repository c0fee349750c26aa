"""The Stream emulator's Python API: :class:`StreamEmulator` registers, seeds, deletes and inspects
emulated videos, inspects the webhook and its deliveries and configures the Stream side, from any
process sharing the state directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import httpx

from alianza_jobs.emulators import rfc3339
from alianza_jobs.emulators.config import StreamSettings
from alianza_jobs.emulators.constants import EMULATOR_ACCOUNT_ID
from alianza_jobs.emulators.control import EmulatorControl
from alianza_jobs.emulators.state import Clock
from alianza_jobs.emulators.stream_queries import get_row
from alianza_jobs.emulators.stream_routes import render_video
from alianza_jobs.emulators.stream_videos import (
    VideoSpec,
    add_videos,
    delete_video,
    describe,
    seed_videos,
)
from alianza_jobs.emulators.stream_webhooks import deliveries, dispatch_due, get_webhook

__all__ = ["StreamEmulator", "VideoSpec"]


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

    def webhook(self, *, include_secret: bool = False) -> dict[str, Any] | None:
        """The registered webhook (``notification_url``, ``account_id``, ``modified``), or None;
        its ``secret`` only when asked for."""
        hook = get_webhook(self.store)
        return None if hook is None else hook.public(include_secret=include_secret)

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Every delivery tried so far, by the video's finishing time: ``uid``, ``attempts``,
        ``delivered_us`` (None until a 2xx), ``last_status`` (0: no answer), ``next_attempt_us``,
        ``final_us``."""
        return deliveries(self.store)

    async def dispatch_webhooks(
        self, client: httpx.AsyncClient, *, wall_clock: Clock = time.time
    ) -> int:
        """One pass of webhook deliveries through ``client`` (see :func:`dispatch_due`)."""
        return await dispatch_due(self.store, client, wall_clock=wall_clock)

    def configure(self, **settings: Any) -> StreamSettings:
        """Change Stream settings for every process (e.g. ``error_rate=0.2``, ``require_token=``)."""
        return self.store.update_config({"stream": settings}).stream
