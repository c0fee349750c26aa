"""100,000 videos: registering them and paging through the list by creation time stay fast.

Timings print with ``-s``. The bounds are loose: they must hold on a 2-core machine with both
cores busy elsewhere (there registering took 37 s and the slowest page 2 s), so they catch only
gross slowdowns. Emulated time stands still (an injected clock): the videos' states are decided by
the seed, not by how long registering and paging take.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx

from alianza_jobs.emulators import IN_PROCESS_STREAM_BASE_URL, StreamEmulator, combined_app

VIDEOS = 100_000
AUTH = {"Authorization": "Bearer t"}
FROZEN_AT = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def frozen_clock() -> float:
    return FROZEN_AT


async def test_paging_100k_videos_by_creation_time(tmp_path: Path) -> None:
    videos = StreamEmulator(tmp_path, clock=frozen_clock)
    started = time.perf_counter()
    uids = videos.seed(VIDEOS, seed=11, spacing_s=1.0)
    registered_s = time.perf_counter() - started
    assert len(uids) == VIDEOS

    app = combined_app(tmp_path, clock=frozen_clock)
    seen: set[str] = set()
    states: Counter[str] = Counter()
    pages = 0
    after: str | None = None
    page_times = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=IN_PROCESS_STREAM_BASE_URL
    ) as client:
        started = time.perf_counter()
        while True:
            params = {"asc": "true", "limit": "1000"} | ({"after": after} if after else {})
            t0 = time.perf_counter()
            body = (await client.get("/accounts/x/stream", params=params, headers=AUTH)).json()
            page_times.append(time.perf_counter() - t0)
            result = body["result"]
            if not result:
                break
            pages += 1
            seen.update(v["uid"] for v in result)
            states.update(v["status"]["state"] for v in result)
            after = result[-1]["created"]
        listed_s = time.perf_counter() - started

        t0 = time.perf_counter()
        filtered = await client.get(
            "/accounts/x/stream",
            params={"status": "queued", "include_counts": "true", "limit": "1000"},
            headers=AUTH,
        )
        filtered_s = time.perf_counter() - t0

    assert seen == set(uids)
    assert pages == VIDEOS // 1000
    # Timelines start at registration and no time has passed since: every video is queued or
    # still waiting for its upload, most are queued, and the status filter counts exactly those.
    assert set(states) <= {"queued", "pendingupload", "downloading"}
    assert filtered.json()["total"] == states["queued"]
    assert filtered.json()["total"] > VIDEOS * 0.8
    print(
        f"\n{VIDEOS} videos: registered in {registered_s:.2f}s; listed in {pages} pages in "
        f"{listed_s:.2f}s (median page {sorted(page_times)[len(page_times) // 2] * 1000:.0f} ms, "
        f"slowest {max(page_times) * 1000:.0f} ms); status filter + count {filtered_s * 1000:.0f} ms"
    )
    assert registered_s < 180
    assert max(page_times) < 15
