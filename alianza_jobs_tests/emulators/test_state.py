"""State shared through files: injected clocks, deterministic timelines, several processes at once,
the Python API, and secrets kept out of the state file."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from alianza_jobs.emulators import (
    IN_PROCESS_ROOT,
    IN_PROCESS_STREAM_BASE_URL,
    ResendEmulator,
    StreamEmulator,
    VideoSpec,
    combined_app,
    resend_app,
    stream_app,
)
from alianza_jobs.emulators.state import DB_FILENAME
from alianza_jobs.settings import default_emulator_state_dir

AUTH = {"Authorization": "Bearer t"}


class FakeClock:
    def __init__(self, start: float = 1_714_564_800.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


async def test_injected_clock_moves_videos_without_sleeping(tmp_path: Path) -> None:
    clock = FakeClock()
    videos = StreamEmulator(tmp_path, clock=clock)
    (uid,) = videos.add_videos(
        [VideoSpec(inprogress_after_s=60, final_after_s=600, outcome="ready", duration=3.5)]
    )
    app = combined_app(tmp_path, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=IN_PROCESS_STREAM_BASE_URL
    ) as client:

        async def state() -> str:
            response = await client.get(f"/accounts/x/stream/{uid}", headers=AUTH)
            return str(response.json()["result"]["status"]["state"])

        assert await state() == "queued"
        clock.now += 61
        assert await state() == "inprogress"
        assert videos.state(uid) == "inprogress"
        clock.now += 600
        assert await state() == "ready"
    described = videos.describe(uid)
    assert described is not None
    assert described["state_now"] == "ready"
    assert described["duration"] == 3.5


def test_a_frozen_clock_stands_still_for_every_process_until_advanced(tmp_path: Path) -> None:
    frozen = FakeClock().now
    videos = StreamEmulator(tmp_path)
    videos.update_config({"frozen_clock_s": frozen})
    (uid,) = videos.add_videos([VideoSpec(inprogress_after_s=60, final_after_s=600)])
    # Another handle, with a wall clock of its own, as another process would have: same time.
    other = StreamEmulator(tmp_path, clock=lambda: 0.0)
    assert videos.now() == other.now() == datetime.fromtimestamp(frozen, UTC)
    assert other.state(uid) == "queued"
    other.advance_clock(61)
    assert videos.now() == datetime.fromtimestamp(frozen + 61, UTC)
    assert videos.state(uid) == "inprogress"
    videos.update_config({"frozen_clock_s": None})  # back on the wall clock, offset kept
    assert videos.now() > datetime.fromtimestamp(frozen + 61, UTC)


async def test_a_held_request_stays_in_flight_until_released(tmp_path: Path) -> None:
    mail = ResendEmulator(tmp_path)
    mail.configure(hold_requests=[1])
    email = {"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "t"}
    auth = {"Authorization": "Bearer re_hold"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=combined_app(tmp_path)), base_url=IN_PROCESS_ROOT
    ) as client:
        held = asyncio.create_task(
            client.post("/emails", headers={**auth, "Idempotency-Key": "held"}, json=email)
        )
        async with asyncio.timeout(30):
            while [e["state"] for e in mail.idempotency("held")] != ["in_flight"]:
                await asyncio.sleep(0.01)  # polling for the request's arrival, bounded above
        # Request 2 is not held: it is answered while request 1 waits, unsent.
        other = await client.post("/emails", headers=auth, json={**email, "subject": "t"})
        assert other.status_code == 200
        assert not held.done()
        assert [e.subject for e in mail.inbox()] == ["t"]
        mail.configure(hold_requests=[])
        assert (await held).status_code == 200
    assert [e.subject for e in mail.inbox()] == ["t", "s"]


def test_timelines_derive_from_uid_and_seed(tmp_path: Path) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    uids = [f"{i:032x}" for i in range(40)]

    def timelines(directory: Path, seed: int) -> list[tuple[object, ...]]:
        videos = StreamEmulator(directory)
        videos.update_config({"seed": seed})
        videos.add_videos([VideoSpec(uid=u, started=start, created=start) for u in uids])
        keys = ("initial_state", "queued", "inprogress", "final", "outcome", "duration")
        out = []
        for uid in uids:
            record = videos.describe(uid)
            assert record is not None
            out.append(tuple(record[k] for k in keys))
        return out

    a = timelines(tmp_path / "a", seed=1)
    assert timelines(tmp_path / "b", seed=1) == a
    assert timelines(tmp_path / "c", seed=2) != a
    outcomes = {t[4] for t in a}
    assert outcomes == {"ready", "error"}  # a share errors, by default 10%


def test_register_keep_or_replace(tmp_path: Path) -> None:
    videos = StreamEmulator(tmp_path)
    uid = "c" * 32
    videos.add_videos([VideoSpec(uid=uid, outcome="ready", final_after_s=0)])
    videos.add_videos([VideoSpec(uid=uid, outcome="error", final_after_s=0)], if_exists="keep")
    assert videos.state(uid) == "ready"
    videos.add_videos([VideoSpec(uid=uid, outcome="error", final_after_s=0)])
    assert videos.state(uid) == "error"
    assert videos.delete(uid) is True
    assert videos.state(uid) is None
    assert videos.delete(uid) is False
    with pytest.raises(ValueError, match="32 hex"):
        videos.add_videos(["not-a-uid"])
    with pytest.raises(ValueError, match="queued_after_s <= inprogress_after_s"):
        videos.add_videos([VideoSpec(inprogress_after_s=10, final_after_s=5)])


def test_config_is_validated_and_shared(tmp_path: Path) -> None:
    one = StreamEmulator(tmp_path)
    one.configure(error_rate=0.25, latency_ms=5)
    with pytest.raises(ValueError, match="error_rate"):
        one.configure(error_rate=2)
    with pytest.raises(ValueError, match="5xx"):
        one.configure(error_statuses=[404])
    other = ResendEmulator(tmp_path)  # another handle, as another process would have
    assert other.config().stream.error_rate == 0.25
    assert other.config().stream.latency_ms == 5
    other.configure(daily_quota=10)
    assert one.config().resend.daily_quota == 10


async def test_admin_refuses_a_bad_patch(tmp_path: Path) -> None:
    app = combined_app(tmp_path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=IN_PROCESS_ROOT
    ) as client:
        bad = await client.patch("/_emulator/config", json={"stream": {"error_rate": -1}})
        assert bad.status_code == 400
        unknown = await client.patch("/_emulator/config", json={"stream": {"eror_rate": 0.1}})
        assert unknown.status_code == 400
        assert (await client.get("/_emulator/config")).json()["stream"]["error_rate"] == 0


def test_tokens_are_never_written_to_the_state(tmp_path: Path) -> None:
    secret = "sk-sentinel-7f3a9c1e5b"
    videos = StreamEmulator(tmp_path)
    videos.configure(require_token=secret, revoke_token=secret + "-old")
    ResendEmulator(tmp_path).configure(require_key="re_" + secret)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(DB_FILENAME))
    assert secret.encode() not in raw
    assert videos.config().stream.required_token_sha256 is not None


async def test_app_overrides_apply_to_that_app_only(tmp_path: Path) -> None:
    overridden = combined_app(tmp_path, overrides={"stream": {"require_token": "only-this"}})
    plain = combined_app(tmp_path)
    (uid,) = StreamEmulator(tmp_path).add_videos([VideoSpec()])
    for app, status in ((overridden, 401), (plain, 200)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=IN_PROCESS_STREAM_BASE_URL
        ) as client:
            response = await client.get(f"/accounts/x/stream/{uid}", headers=AUTH)
            assert response.status_code == status
    with pytest.raises(ValueError, match="error_rate"):
        combined_app(tmp_path, overrides={"stream": {"error_rate": 3}})


def test_default_state_dir_is_under_dagster_home(dagster_home: Path) -> None:
    assert default_emulator_state_dir() == dagster_home / "emulators"
    assert default_emulator_state_dir({"DAGSTER_HOME": "/x"}) == Path("/x/emulators")


def _worker(state_dir: str, worker: int, n: int) -> list[str]:
    """One process using the emulators in-process, as a Dagster run would."""

    async def run() -> list[str]:
        app = combined_app(Path(state_dir))
        ids = []
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=IN_PROCESS_ROOT
        ) as client:
            for i in range(n):
                sent = await client.post(
                    "/emails",
                    headers={"Authorization": f"Bearer re_worker{worker}"},
                    json={
                        "from": "a@example.com",
                        "to": f"w{worker}-{i}@example.com",
                        "subject": "s",
                        "text": "t",
                    },
                )
                assert sent.status_code == 200, sent.text
                ids.append(sent.json()["id"])
                got = await client.get(f"/client/v4/accounts/x/stream/{'a' * 32}", headers=AUTH)
                assert got.status_code == 200, got.text
        return ids

    return asyncio.run(run())


def test_several_processes_share_one_state(tmp_path: Path) -> None:
    StreamEmulator(tmp_path).add_videos(["a" * 32])
    ResendEmulator(tmp_path).configure(rate_limit_requests=10_000)
    workers, per_worker = 4, 30
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(
            pool.map(_worker, [str(tmp_path)] * workers, range(workers), [per_worker] * workers)
        )
    ids = [i for worker_ids in results for i in worker_ids]
    mail = ResendEmulator(tmp_path)
    assert len(set(ids)) == workers * per_worker
    assert {e.id for e in mail.inbox()} == set(ids)
    assert mail.calls(service="resend", status=200) == workers * per_worker
    assert mail.calls(service="stream", status=200) == workers * per_worker
    recipients = [e.to[0] for e in mail.inbox()]
    assert len(set(recipients)) == len(recipients)


def _send_with_key(state_dir: str, key: str) -> int:
    async def run() -> int:
        app = combined_app(Path(state_dir))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=IN_PROCESS_ROOT
        ) as client:
            response = await client.post(
                "/emails",
                headers={"Authorization": "Bearer re_shared", "Idempotency-Key": key},
                json={"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "t"},
            )
            return response.status_code

    return asyncio.run(run())


def test_one_idempotency_key_sends_once_across_processes(tmp_path: Path) -> None:
    # Long enough in flight that the processes overlap while the first holds the key.
    ResendEmulator(tmp_path).configure(latency_ms=1500, rate_limit_requests=100)
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        statuses = list(pool.map(_send_with_key, [str(tmp_path)] * 4, ["same-key"] * 4))
    assert statuses.count(200) >= 1
    assert set(statuses) <= {200, 409}
    mail = ResendEmulator(tmp_path)
    assert mail.count() == 1
    assert mail.counts_by_idempotency_key() == {"same-key": 1}


def test_building_an_app_is_cheap_and_touches_no_disk(tmp_path: Path) -> None:
    state_dir = tmp_path / "not-yet"
    started = time.perf_counter()
    for _ in range(20):
        combined_app(state_dir)
    assert (time.perf_counter() - started) / 20 < 0.05
    assert not state_dir.exists()


async def test_single_service_apps_serve_at_their_root(tmp_path: Path) -> None:
    (uid,) = StreamEmulator(tmp_path).add_videos([VideoSpec()])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stream_app(tmp_path)), base_url="http://s"
    ) as client:
        assert (await client.get(f"/accounts/x/stream/{uid}", headers=AUTH)).status_code == 200
        assert (await client.get("/_emulator/health")).json()["ok"] is True
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=resend_app(tmp_path)), base_url="http://r"
    ) as client:
        sent = await client.post(
            "/emails",
            headers={"Authorization": "Bearer re_x"},
            json={"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "t"},
        )
        assert sent.status_code == 200
        assert (await client.get("/client/v4/accounts/x/stream")).status_code == 404


def test_seeding_more_adds_videos(tmp_path: Path) -> None:
    videos = StreamEmulator(tmp_path)
    first = videos.seed(5, seed=9)
    more = videos.seed(3, seed=9, first_index=5)
    assert videos.count() == 8
    assert not set(first) & set(more)
    assert StreamEmulator(tmp_path / "again").seed(5, seed=9) == first
