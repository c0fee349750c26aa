"""The Stream webhook receiver: verified deliveries are stored once and answered 200; everything
else is refused with a status and a reason, stores nothing and prints no traceback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.clients.webhooks import sign_stream_webhook
from alianza_jobs.db.engine import create_engine
from alianza_jobs.defs.videos.webhook_receiver import MAX_BODY_BYTES, WEBHOOK_PATH, WebhookReceiver
from alianza_jobs.defs.videos.webhook_sql import DELIVERIES

SECRET = "whsec_receiver_test_3f9a1c"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
UID = "a" * 32


def video(uid: str = UID, state: str = "ready", **extra: Any) -> dict[str, Any]:
    return {"uid": uid, "status": {"state": state}, "duration": 12.5, **extra}


def signed(body: bytes, *, at: datetime = NOW, secret: str = SECRET) -> dict[str, str]:
    header = sign_stream_webhook(body, secret, timestamp=int(at.timestamp()))
    return {"Webhook-Signature": header, "Content-Type": "application/json"}


def client_for(engine: AsyncEngine, **kwargs: Any) -> httpx.AsyncClient:
    receiver = WebhookReceiver(engine, SECRET, clock=lambda: NOW, **kwargs)
    transport = httpx.ASGITransport(app=receiver.app())
    return httpx.AsyncClient(transport=transport, base_url="http://receiver")


async def stored(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(DELIVERIES).order_by(DELIVERIES.c.id))).all())


async def test_a_verified_delivery_is_stored_once(engine: AsyncEngine) -> None:
    body = json.dumps(video()).encode()
    async with client_for(engine) as client:
        first = await client.post(WEBHOOK_PATH, content=body, headers=signed(body))
        # Stream re-sends what it got no answer to: same body, signed again later.
        again = await client.post(
            WEBHOOK_PATH, content=body, headers=signed(body, at=NOW + timedelta(seconds=30))
        )
    assert (first.status_code, first.json()) == (200, {"stored": True})
    assert (again.status_code, again.json()) == (200, {"stored": False})
    [row] = await stored(engine)
    assert (row.uid, row.state, row.applied_at) == (UID, "ready", None)
    assert row.payload == video()


async def test_deliveries_of_one_video_in_two_states_are_two_rows(engine: AsyncEngine) -> None:
    async with client_for(engine) as client:
        for state in ("inprogress", "ready"):
            body = json.dumps(video(state=state)).encode()
            assert (await client.post(WEBHOOK_PATH, content=body, headers=signed(body))).is_success
    assert [r.state for r in await stored(engine)] == ["inprogress", "ready"]


async def test_an_unknown_uid_is_stored_for_the_apply_job_to_ignore(engine: AsyncEngine) -> None:
    body = json.dumps(video(uid="f" * 32)).encode()
    async with client_for(engine) as client:
        assert (await client.post(WEBHOOK_PATH, content=body, headers=signed(body))).is_success
    assert [r.uid for r in await stored(engine)] == ["f" * 32]


GOOD = json.dumps(video()).encode()


def _refusals() -> list[Any]:
    def case(name: str, status: int, reason: str, **request: Any) -> Any:
        return pytest.param(request, status, reason, id=name)

    stale = NOW - timedelta(minutes=6)
    future = NOW + timedelta(minutes=6)
    return [
        case("no signature", 401, "missing_signature", content=GOOD, headers={}),
        case(
            "malformed header",
            401,
            "malformed_header",
            content=GOOD,
            headers={"Webhook-Signature": "sig1=nothex"},
        ),
        case(
            "wrong secret",
            401,
            "bad_signature",
            content=GOOD,
            headers=signed(GOOD, secret="someone-else"),
        ),
        case(
            "signature of another body",
            401,
            "bad_signature",
            content=GOOD,
            headers=signed(json.dumps(video(state="error")).encode()),
        ),
        case("stale (replay)", 401, "stale", content=GOOD, headers=signed(GOOD, at=stale)),
        case("from the future", 401, "stale", content=GOOD, headers=signed(GOOD, at=future)),
        case("not JSON", 400, "not_json", content=b"<xml/>", headers=signed(b"<xml/>")),
        case("not UTF-8", 400, "not_json", content=b"\xff\xfe", headers=signed(b"\xff\xfe")),
        case("a JSON list", 400, "no_uid", content=b"[1]", headers=signed(b"[1]")),
        case(
            "no uid",
            400,
            "no_uid",
            content=b'{"status": {}}',
            headers=signed(b'{"status": {}}'),
        ),
        case(
            "a uid that is not text",
            400,
            "no_uid",
            content=b'{"uid": 7}',
            headers=signed(b'{"uid": 7}'),
        ),
        case(
            "an overlong uid",
            400,
            "bad_uid",
            content=json.dumps(video(uid="b" * 65)).encode(),
            headers=signed(json.dumps(video(uid="b" * 65)).encode()),
        ),
    ]


@pytest.mark.parametrize(("request_kwargs", "status", "reason"), _refusals())
async def test_bad_input_is_refused_and_stores_nothing(
    engine: AsyncEngine,
    request_kwargs: dict[str, Any],
    status: int,
    reason: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with client_for(engine) as client:
        response = await client.post(WEBHOOK_PATH, **request_kwargs)
    assert (response.status_code, response.json()) == (status, {"error": reason})
    assert await stored(engine) == []
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert SECRET not in out + err
    assert reason in err  # the refusal is logged, with its reason


async def test_an_oversized_body_is_refused_whether_declared_or_streamed(
    engine: AsyncEngine,
) -> None:
    huge = json.dumps(video(meta={"pad": "x" * MAX_BODY_BYTES})).encode()

    async def chunks() -> Any:
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    async with client_for(engine) as client:
        declared = await client.post(WEBHOOK_PATH, content=huge, headers=signed(huge))
        # No Content-Length (chunked): the cap is enforced while reading.
        streamed = await client.post(WEBHOOK_PATH, content=chunks(), headers=signed(huge))
    assert (declared.status_code, declared.json()) == (413, {"error": "too_large"})
    assert (streamed.status_code, streamed.json()) == (413, {"error": "too_large"})
    assert await stored(engine) == []


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", WEBHOOK_PATH, 405, "method_not_allowed"),
        ("PUT", WEBHOOK_PATH, 405, "method_not_allowed"),
        ("POST", "/", 404, "not_found"),
        ("POST", "/stream/webhook/extra", 404, "not_found"),
    ],
)
async def test_other_paths_and_methods_are_refused(
    engine: AsyncEngine, method: str, path: str, status: int, reason: str
) -> None:
    async with client_for(engine) as client:
        response = await client.request(method, path, content=GOOD, headers=signed(GOOD))
    assert (response.status_code, response.json()) == (status, {"error": reason})
    assert await stored(engine) == []


async def test_a_database_that_cannot_store_gets_503_so_stream_retries(
    tmp_path: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    # A database without the jobs' tables: nothing can be stored, nothing is acknowledged.
    bare = create_engine(f"sqlite:///{tmp_path / 'bare.db'}")
    try:
        async with client_for(bare) as client:
            response = await client.post(WEBHOOK_PATH, content=GOOD, headers=signed(GOOD))
    finally:
        await bare.dispose()
    assert (response.status_code, response.json()) == (503, {"error": "unavailable"})
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "database failed" in err


async def test_health_answers_and_the_secret_is_never_shown(engine: AsyncEngine) -> None:
    receiver = WebhookReceiver(engine, SECRET)
    assert SECRET not in repr(receiver)
    async with client_for(engine) as client:
        response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"ok": True})
    with pytest.raises(ValueError, match="empty"):
        WebhookReceiver(engine, "")
