"""The Stream emulator's behaviour over HTTP, in-process and over a socket alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alianza_jobs.emulators import rfc3339
from alianza_jobs_tests.emulators.conftest import STREAM_AUTH, TOKEN, Emulator

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_video_advances_from_queued_to_ready_as_time_passes(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos(
        {"inprogress_after_s": 10, "final_after_s": 30, "outcome": "ready", "duration": 42.5}
    )

    first = (await emulator.get_video(uid)).json()["result"]
    assert first["status"]["state"] == "queued"
    assert first["duration"] == -1
    assert first["readyToStream"] is False
    assert "pctComplete" not in first["status"]

    await emulator.advance(15)
    middle = (await emulator.get_video(uid)).json()["result"]
    assert middle["status"]["state"] == "inprogress"
    assert isinstance(middle["status"]["pctComplete"], str)
    assert middle["status"]["pctComplete"] == "25.000000"  # 5 s into 20 s of processing, exactly
    assert middle["duration"] == 42.5  # known once processing starts, before ready
    assert middle["modified"] > first["modified"]

    await emulator.advance(20)
    done = (await emulator.get_video(uid)).json()["result"]
    assert done["status"]["state"] == "ready"
    assert done["readyToStream"] is True
    assert done["duration"] == 42.5
    assert done["readyToStreamAt"] is not None
    assert done["status"]["pctComplete"] == "100.000000"


async def test_errored_videos_use_both_spellings_of_the_reason(emulator: Emulator) -> None:
    modern, legacy = await emulator.add_videos(
        {
            "outcome": "error",
            "final_after_s": 0,
            "error_reason_code": "ERR_NON_VIDEO",
            "legacy_error_spelling": False,
        },
        {"outcome": "error", "final_after_s": 0, "legacy_error_spelling": True},
    )
    status = (await emulator.get_video(modern)).json()["result"]["status"]
    assert status["state"] == "error"
    assert status["errorReasonCode"] == "ERR_NON_VIDEO"
    assert status["errorReasonText"]
    assert "errReasonCode" not in status

    status = (await emulator.get_video(legacy)).json()["result"]["status"]
    assert status["state"] == "error"
    assert status["errReasonCode"].startswith("ERR_")
    assert status["errReasonText"]
    assert "errorReasonCode" not in status


async def test_uploads_start_pending_or_downloading_then_queue(emulator: Emulator) -> None:
    pending, downloading = await emulator.add_videos(
        {"initial_state": "pendingupload", "queued_after_s": 5, "inprogress_after_s": 50},
        {"initial_state": "downloading", "queued_after_s": 5, "inprogress_after_s": 50},
    )
    video = (await emulator.get_video(pending)).json()["result"]
    assert video["status"]["state"] == "pendingupload"
    assert video["uploaded"] is None
    assert video["uploadExpiry"] is not None
    assert (await emulator.get_video(downloading)).json()["result"]["status"]["state"] == (
        "downloading"
    )
    await emulator.advance(6)
    for uid in (pending, downloading):
        video = (await emulator.get_video(uid)).json()["result"]
        assert video["status"]["state"] == "queued"
        assert video["uploaded"] is not None


async def test_unknown_and_deleted_videos_answer_the_404_envelope(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    response = await emulator.get_video("0" * 32)
    assert response.status_code == 404
    body = response.json()
    assert body["success"] is False
    assert body["result"] is None
    assert body["messages"] == []
    assert isinstance(body["errors"][0]["code"], int)
    assert body["errors"][0]["message"]

    assert (await emulator.get_video(uid)).status_code == 200
    assert (await emulator.admin("DELETE", f"/stream/videos/{uid}"))["deleted"] is True
    assert (await emulator.get_video(uid)).status_code == 404
    listed = (await emulator.list_videos()).json()["result"]
    assert uid not in [v["uid"] for v in listed]


async def _catalog(emulator: Emulator) -> list[str]:
    """Six videos one minute apart; the last two errored, the first two ready, two still queued."""
    specs = []
    for i in range(6):
        spec: dict[str, object] = {
            "created": iso(T0 + timedelta(minutes=i)),
            "creator": f"c{i % 2}",
        }
        if i < 2:
            spec |= {"final_after_s": 0, "outcome": "ready"}
        elif i < 4:
            spec |= {"inprogress_after_s": 600, "final_after_s": 900}
        else:
            spec |= {"final_after_s": 0, "outcome": "error"}
        specs.append(spec)
    return await emulator.add_videos(*specs)


async def test_list_filters_status_creator_and_counts(emulator: Emulator) -> None:
    uids = await _catalog(emulator)

    everything = (await emulator.list_videos(include_counts="true")).json()
    assert everything["success"] is True
    assert everything["total"] == 6
    assert everything["range"] == 6
    # Newest first unless asc=true.
    assert [v["uid"] for v in everything["result"]] == list(reversed(uids))

    ready = (await emulator.list_videos(status="ready")).json()["result"]
    assert [v["uid"] for v in ready] == [uids[1], uids[0]]
    assert all(v["status"]["state"] == "ready" for v in ready)
    queued = (await emulator.list_videos(status="queued", asc="true")).json()["result"]
    assert [v["uid"] for v in queued] == uids[2:4]
    errored = (await emulator.list_videos(status="error")).json()["result"]
    assert {v["uid"] for v in errored} == set(uids[4:])
    assert (await emulator.list_videos(status="inprogress")).json()["result"] == []

    by_creator = (await emulator.list_videos(creator="c1", include_counts="true")).json()
    assert by_creator["total"] == 3
    assert {v["uid"] for v in by_creator["result"]} == {uids[1], uids[3], uids[5]}

    # Status is computed at request time: after 10 minutes the queued ones are in progress.
    await emulator.advance(700)
    moving = (await emulator.list_videos(status="inprogress", asc="true")).json()["result"]
    assert [v["uid"] for v in moving] == uids[2:4]


async def test_list_after_and_before_are_exclusive_on_creation_time(emulator: Emulator) -> None:
    uids = await _catalog(emulator)
    page = (
        await emulator.list_videos(
            after=iso(T0 + timedelta(minutes=1)), before=iso(T0 + timedelta(minutes=4)), asc="true"
        )
    ).json()
    assert [v["uid"] for v in page["result"]] == uids[2:4]
    # The same instants written with an offset mean the same thing.
    page = (
        await emulator.list_videos(after="2024-05-01T14:01:00+02:00", asc="true", limit=2)
    ).json()
    assert [v["uid"] for v in page["result"]] == uids[2:4]
    assert page["range"] == 2
    # Echoing a video's own `created` as `after` excludes it (microsecond precision round-trips).
    first = (await emulator.list_videos(asc="true", limit=1)).json()["result"][0]
    rest = (await emulator.list_videos(asc="true", after=first["created"])).json()["result"]
    assert [v["uid"] for v in rest] == uids[1:]


async def test_list_limit_defaults_and_caps_at_1000(emulator: Emulator) -> None:
    await emulator.admin("POST", "/stream/seed", {"count": 1005, "seed": 3, "spacing_s": 1})
    assert len((await emulator.list_videos()).json()["result"]) == 1000
    assert len((await emulator.list_videos(limit=5000)).json()["result"]) == 1000
    assert len((await emulator.list_videos(limit=7)).json()["result"]) == 7
    counted = (await emulator.list_videos(limit=10, include_counts="true")).json()
    assert counted["total"] == 1005
    assert counted["range"] == 10


async def test_paging_by_creation_time_with_ties(emulator: Emulator) -> None:
    """Several videos created in the same microsecond: exclusive `after` skips the rest of a tie
    split across pages, exactly the trap a client's pager must guard against."""
    same = iso(T0)
    uids = await emulator.add_videos(*({"created": same} for _ in range(3)))
    later = await emulator.add_videos({"created": iso(T0 + timedelta(seconds=1))})
    first = (await emulator.list_videos(asc="true", limit=2)).json()["result"]
    assert len(first) == 2
    assert {v["created"] for v in first} == {rfc3339.format_us(rfc3339.to_us(T0))}
    second = (await emulator.list_videos(asc="true", limit=2, after=first[-1]["created"])).json()
    assert [v["uid"] for v in second["result"]] == later
    skipped = set(uids) - {v["uid"] for v in first}
    assert len(skipped) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "finished"}, "status"),
        ({"after": "yesterday"}, "RFC 3339"),
        ({"limit": "many"}, "limit"),
        ({"asc": "maybe"}, "asc"),
    ],
)
async def test_bad_list_parameters_are_400(
    emulator: Emulator, params: dict[str, str], message: str
) -> None:
    response = await emulator.list_videos(**params)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert message in body["errors"][0]["message"]


async def test_auth_any_token_by_default_then_required_and_revoked(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    missing = await emulator.get_video(uid, headers={})
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["code"] == 10000
    assert missing.json()["success"] is False
    assert (
        await emulator.get_video(uid, headers={"Authorization": "Bearer anything"})
    ).status_code == 200

    config = await emulator.configure({"stream": {"require_token": TOKEN}})
    assert config["stream"]["token_required"] is True
    assert TOKEN not in str(config)
    wrong = await emulator.get_video(uid, headers={"Authorization": "Bearer anything"})
    assert wrong.status_code == 401
    assert (await emulator.get_video(uid)).status_code == 200

    await emulator.configure({"stream": {"revoke_token": TOKEN}})
    assert (await emulator.get_video(uid)).status_code == 401


async def test_required_account(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    await emulator.configure({"stream": {"require_account": "a" * 32}})
    other = await emulator.get_video(uid)
    assert other.status_code == 403
    assert other.json()["success"] is False
    right = await emulator.client.get(
        emulator.video_url(uid, account="a" * 32), headers=STREAM_AUTH
    )
    assert right.status_code == 200


async def test_unknown_route_answers_cloudflare_style(emulator: Emulator) -> None:
    response = await emulator.client.get(f"{emulator.stream_base}/zones", headers=STREAM_AUTH)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == 7000


async def test_counters_count_requests_per_endpoint_and_status(emulator: Emulator) -> None:
    (uid,) = await emulator.add_videos({})
    for _ in range(3):
        await emulator.get_video(uid)
    await emulator.get_video("f" * 32)
    await emulator.list_videos()
    await emulator.get_video(uid, headers={})
    counters = await emulator.counters()
    get_one = "GET /accounts/{account_id}/stream/{uid}"
    assert counters[("stream", get_one, 200)] == 3
    assert counters[("stream", get_one, 404)] == 1
    assert counters[("stream", get_one, 401)] == 1
    assert counters[("stream", "GET /accounts/{account_id}/stream", 200)] == 1
    await emulator.admin("DELETE", "/counters")
    assert await emulator.counters() == {}
