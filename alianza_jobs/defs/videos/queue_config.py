"""The video queue's run config: page and batch sizes, API budgets, the lease, the listing margin,
the attempts before a row is dead-lettered, and dry runs."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from alianza_jobs.clients.stream import MAX_PAGE_SIZE


class VideoQueueConfig(dg.Config):
    page_size: int = Field(
        default=MAX_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description="Videos per listing page; each page is settled with one bulk write.",
    )
    lookup_batch_size: int = Field(
        default=100,
        ge=0,
        le=MAX_PAGE_SIZE,
        description=(
            "Uids per `id`-filtered listing call for rows the listing did not settle; 0 asks "
            "about each such video with its own GET instead."
        ),
    )
    get_concurrency: int = Field(
        default=8, ge=1, le=64, description="Per-video GETs in flight at once."
    )
    max_gets: int = Field(
        default=500,
        ge=0,
        description=(
            "Per-video GETs one run may make (Stream allows 1,200 requests per 5 minutes per "
            "token, shared with sync_stream_catalog); the rest waits for the next tick."
        ),
    )
    max_listing_pages: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Listing pages one run may read before the remaining rows go to the id lookups. "
            "Default: what the lookups for the same rows would cost (at least 2)."
        ),
    )
    lease_seconds: float = Field(
        default=180.0,
        ge=30.0,
        description=(
            "How long the rows stay ours. Longer than the 2-minute timeout, so a slow but "
            "healthy run keeps them; short enough that rows of a killed run return by the next "
            "tick."
        ),
    )
    listing_margin_seconds: float = Field(
        default=3600.0,
        ge=0.0,
        description=(
            "The listing starts this long before the oldest leased row was created: the video is "
            "created in Stream before its row, and the two clocks differ."
        ),
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        description="Permanent failures of one row before it becomes `error` and a dead letter.",
    )
    dry_run: bool = Field(
        default=False,
        description=(
            "Ask Stream and count what would change, but write nothing (rows are leased and "
            "given back unchanged)."
        ),
    )
