"""The Stream emulator's webhook: its routes, and deliveries to a real receiver.

The routes are exercised in-process through ``combined_app``. Deliveries go through an
``httpx.AsyncClient`` whose transport is a small Starlette receiver app, so a POST really crosses
an ASGI boundary and is answered with whatever status the test chose. The emulated clock is frozen
(``frozen_clock_s``) and signatures use a fixed wall clock, so nothing depends on how long the test
takes; one test runs ``alianza-jobs emulate`` and waits for a real receiver to be called.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from alianza_jobs.cli import emulate as emulate_cli
from alianza_jobs.clients.webhooks import verify_stream_webhook
from alianza_jobs.emulators import (
    IN_PROCESS_STREAM_BASE_URL,
    StreamEmulator,
    combined_app,
    rfc3339,
    stream_webhooks,
)
from alianza_jobs.emulators.constants import EMULATOR_WEBHOOK_SECRET
from alianza_jobs.emulators.state import DB_FILENAME, SCHEMA_VERSION, StateStore
from alianza_jobs.emulators.stream_webhooks import due_deliveries, run_dispatcher
from alianza_jobs_tests.emulators.conftest import ACCOUNT, STREAM_AUTH, start_emulate, stop

T0 = 1_767_268_800.0  # 2026-01-01T12:00:00Z, the frozen emulated clock
WALL = 1_800_000_000  # the wall clock the signatures are made with
HOOK_URL = "https://receiver.test/hooks/stream"
WEBHOOK = f"/accounts/{ACCOUNT}/stream/webhook"
CUSTOM_SECRET = "whsec-SENTINEL-custom-secret-4471"


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]

    def video(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Receiver:
    """A webhook receiver app: records every POST and answers ``status``."""

    status: int = 200
    deliveries: list[Delivery] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def hook(self, request: Request) -> Response:
        self.deliveries.append(Delivery(await request.body(), dict(request.headers)))
        self.arrived.set()
        return Response(status_code=self.status)

    def client(self) -> httpx.AsyncClient:
        app = Starlette(routes=[Route("/hooks/stream", self.hook, methods=["POST"])])
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app))

    def uids(self) -> list[str]:
        return [d.video()["uid"] for d in self.deliveries]


@dataclass
class Env:
    emulator: StreamEmulator
    api: httpx.AsyncClient
    receiver: Receiver
    receiver_client: httpx.AsyncClient

    async def register(self, url: str = HOOK_URL) -> httpx.Response:
        response = await self.api.put(WEBHOOK, json={"notificationUrl": url})
        assert response.status_code == 200, response.text
        return response

    async def dispatch(self) -> int:
        return await self.emulator.dispatch_webhooks(self.receiver_client, wall_clock=lambda: WALL)

    def add(self, **spec: Any) -> str:
        (uid,) = self.emulator.add_videos([spec])
        return uid


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    state_dir = tmp_path / "state"
    emulator = StreamEmulator(state_dir)
    emulator.update_config({"frozen_clock_s": T0})
    receiver = Receiver()
    transport = httpx.ASGITransport(app=combined_app(state_dir))
    async with (
        httpx.AsyncClient(
            transport=transport, base_url=IN_PROCESS_STREAM_BASE_URL, headers=STREAM_AUTH
        ) as api,
        receiver.client() as receiver_client,
    ):
        yield Env(emulator, api, receiver, receiver_client)


def verify(delivery: Delivery, secret: str = EMULATOR_WEBHOOK_SECRET) -> None:
    verify_stream_webhook(
        delivery.body,
        delivery.headers["webhook-signature"],
        secret,
        now=datetime.fromtimestamp(WALL, UTC),
    )


# -- routes -----------------------------------------------------------------------------------------


async def test_put_get_delete(env: Env) -> None:
    put = (await env.register()).json()
    assert put["success"] is True
    assert put["errors"] == [] and put["messages"] == []
    assert put["result"] == {
        "notificationUrl": HOOK_URL,
        "modified": rfc3339.format_us(rfc3339.to_us(T0)),
        "secret": EMULATOR_WEBHOOK_SECRET,
    }
    got = await env.api.get(WEBHOOK)
    assert got.status_code == 200
    assert got.json()["result"] == put["result"]
    assert env.emulator.webhook() == {
        "notification_url": HOOK_URL,
        "account_id": ACCOUNT,
        "modified": put["result"]["modified"],
    }
    assert env.emulator.webhook(include_secret=True)["secret"] == EMULATOR_WEBHOOK_SECRET  # type: ignore[index]

    # Another PUT replaces it: the account has one webhook.
    env.emulator.advance_clock(60)
    again = (await env.register("http://127.0.0.1:9000/other")).json()["result"]
    assert again["notificationUrl"] == "http://127.0.0.1:9000/other"
    assert again["modified"] == rfc3339.format_us(rfc3339.to_us(T0 + 60))

    deleted = await env.api.delete(WEBHOOK)
    assert deleted.status_code == 200
    assert deleted.json()["result"] == ""
    assert env.emulator.webhook() is None
    gone = await env.api.get(WEBHOOK)
    assert gone.status_code == 404
    assert gone.json()["success"] is False and gone.json()["result"] is None

    counters = {(c.endpoint, c.status): c.count for c in env.emulator.counters()}
    assert counters[("PUT /accounts/{account_id}/stream/webhook", 200)] == 2
    assert counters[("GET /accounts/{account_id}/stream/webhook", 200)] == 1
    assert counters[("GET /accounts/{account_id}/stream/webhook", 404)] == 1
    assert counters[("DELETE /accounts/{account_id}/stream/webhook", 200)] == 1


async def test_without_a_webhook_get_and_delete_are_404(env: Env) -> None:
    assert (await env.api.get(WEBHOOK)).status_code == 404
    assert (await env.api.delete(WEBHOOK)).status_code == 404
    await env.register()
    # The one webhook is this account's; another account has none.
    other = f"/accounts/{'b' * 32}/stream/webhook"
    assert (await env.api.get(other)).status_code == 404
    assert (await env.api.delete(other)).status_code == 404
    assert env.emulator.webhook() is not None


async def test_a_configured_secret_is_handed_out_and_not_shown_by_admin(env: Env) -> None:
    env.emulator.configure(webhook_secret=CUSTOM_SECRET)
    assert (await env.register()).json()["result"]["secret"] == CUSTOM_SECRET
    admin = await env.api.get("http://emulator.local/_emulator/config")
    assert admin.status_code == 200
    assert admin.json()["stream"]["webhook_secret_configured"] is True
    assert CUSTOM_SECRET not in admin.text
    assert CUSTOM_SECRET not in repr(stream_webhooks.get_webhook(env.emulator.store))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b'["https://receiver.test/hook"]',
        b"{}",
        b'{"notificationUrl": null}',
        b'{"notificationUrl": 42}',
        b'{"notificationUrl": ""}',
        b'{"notificationUrl": "/relative/hook"}',
        b'{"notificationUrl": "ftp://receiver.test/hook"}',
        b'{"notificationUrl": "https://"}',
        b'{"notificationUrl": "receiver.test/hook"}',
        b'{"notificationUrl": "http://receiver.test:99999/hook"}',
    ],
)
async def test_bad_bodies_are_400(env: Env, content: bytes) -> None:
    response = await env.api.put(
        WEBHOOK, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False and body["result"] is None
    assert body["errors"][0]["code"] == 10002
    assert body["errors"][0]["message"]
    assert env.emulator.webhook() is None


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
async def test_unauthenticated_is_401(env: Env, method: str) -> None:
    await env.register()
    response = await env.api.request(
        method,
        WEBHOOK,
        json={"notificationUrl": "https://elsewhere.test/hook"} if method == "PUT" else None,
        headers={"Authorization": ""},
    )
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == 10000
    assert env.emulator.webhook()["notification_url"] == HOOK_URL  # type: ignore[index]


async def test_the_webhook_route_does_not_shadow_videos(env: Env) -> None:
    uid = env.add(final_after_s=0, outcome="ready")
    await env.register()
    video = await env.api.get(f"/accounts/{ACCOUNT}/stream/{uid}")
    assert video.status_code == 200
    assert video.json()["result"]["uid"] == uid


# -- deliveries -------------------------------------------------------------------------------------


async def test_deliveries_are_signed_and_are_the_video_as_get_returns_it(env: Env) -> None:
    await env.register()
    ready = env.add(final_after_s=10, outcome="ready", duration=12.5)
    errored = env.add(
        final_after_s=20,
        outcome="error",
        error_reason_code="ERR_NON_VIDEO",
        legacy_error_spelling=False,
    )
    env.emulator.advance_clock(30)

    assert await env.dispatch() == 2

    assert env.receiver.uids() == [ready, errored]  # by finishing time
    for delivery in env.receiver.deliveries:
        verify(delivery)
        assert delivery.headers["webhook-signature"].startswith(f"time={WALL},sig1=")
        assert delivery.headers["content-type"] == "application/json"
        uid = delivery.video()["uid"]
        got = await env.api.get(f"/accounts/{ACCOUNT}/stream/{uid}")
        assert delivery.video() == got.json()["result"]
        assert delivery.body == json.dumps(got.json()["result"], separators=(",", ":")).encode()
    assert [d.video()["status"]["state"] for d in env.receiver.deliveries] == ["ready", "error"]
    assert env.receiver.deliveries[1].video()["status"]["errorReasonCode"] == "ERR_NON_VIDEO"


async def test_a_configured_secret_signs_the_deliveries(env: Env) -> None:
    env.emulator.configure(webhook_secret=CUSTOM_SECRET)
    await env.register()
    env.add(final_after_s=0, outcome="ready")
    assert await env.dispatch() == 1
    verify(env.receiver.deliveries[0], CUSTOM_SECRET)


async def test_only_videos_finishing_after_registration_each_once(env: Env) -> None:
    old = env.add(final_after_s=0, outcome="ready")
    old_error = env.add(final_after_s=0, outcome="error")
    env.emulator.advance_clock(1)
    await env.register()
    at_registration = env.add(final_after_s=0, outcome="ready")
    later = env.add(final_after_s=10, outcome="ready")
    deleted = env.add(final_after_s=5, outcome="ready")
    env.emulator.delete(deleted)

    assert await env.dispatch() == 1
    assert env.receiver.uids() == [at_registration]

    env.emulator.advance_clock(9.999)
    assert await env.dispatch() == 0  # `later` is still in progress
    env.emulator.advance_clock(0.001)
    assert await env.dispatch() == 1
    assert env.receiver.uids() == [at_registration, later]

    env.emulator.advance_clock(3600)
    assert await env.dispatch() == 0
    assert env.receiver.uids() == [at_registration, later]
    assert not {old, old_error, deleted} & set(env.receiver.uids())
    records = {d["uid"]: d for d in env.emulator.webhook_deliveries()}
    assert set(records) == {at_registration, later}
    assert all(r["attempts"] == 1 and r["last_status"] == 200 for r in records.values())
    assert records[later]["delivered_us"] == rfc3339.to_us(T0 + 11)


async def test_a_refused_delivery_is_retried_after_its_delay_and_not_before(env: Env) -> None:
    env.emulator.configure(webhook_retry_s=1.0, webhook_max_attempts=4)
    env.receiver.status = 500
    await env.register()
    uid = env.add(final_after_s=0, outcome="ready")

    assert await env.dispatch() == 1  # attempt 1
    for attempt, delay in ((2, 1.0), (3, 2.0), (4, 4.0)):
        env.emulator.advance_clock(delay - 0.001)
        assert await env.dispatch() == 0, f"attempt {attempt} came early"
        env.emulator.advance_clock(0.001)
        assert await env.dispatch() == 1, f"attempt {attempt} did not come"
    # Four attempts were the most allowed: no more, however long one waits.
    env.emulator.advance_clock(3600)
    env.receiver.status = 200
    assert await env.dispatch() == 0
    assert env.receiver.uids() == [uid] * 4
    for delivery in env.receiver.deliveries:
        verify(delivery)
    (record,) = env.emulator.webhook_deliveries()
    assert record["attempts"] == 4
    assert record["delivered_us"] is None
    assert record["last_status"] == 500


async def test_a_retry_that_is_answered_2xx_ends_the_delivery(env: Env) -> None:
    env.receiver.status = 503
    await env.register()
    uid = env.add(final_after_s=0, outcome="error")
    assert await env.dispatch() == 1
    env.receiver.status = 204
    env.emulator.advance_clock(1)
    assert await env.dispatch() == 1
    env.emulator.advance_clock(60)
    assert await env.dispatch() == 0
    (record,) = env.emulator.webhook_deliveries()
    assert (record["uid"], record["attempts"], record["last_status"]) == (uid, 2, 204)
    assert record["delivered_us"] == rfc3339.to_us(T0 + 1)


async def test_no_answer_is_a_failed_attempt_too(env: Env) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    await env.register()
    env.add(final_after_s=0, outcome="ready")
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as unreachable:
        assert await env.emulator.dispatch_webhooks(unreachable, wall_clock=lambda: WALL) == 1
    (record,) = env.emulator.webhook_deliveries()
    assert (record["attempts"], record["last_status"], record["delivered_us"]) == (1, 0, None)
    env.emulator.advance_clock(1)
    assert await env.dispatch() == 1
    assert env.emulator.webhook_deliveries()[0]["last_status"] == 200


async def test_nothing_is_sent_without_a_webhook_or_when_disabled(env: Env) -> None:
    env.add(final_after_s=0, outcome="ready")
    assert await env.dispatch() == 0
    env.emulator.advance_clock(1)
    env.emulator.configure(webhooks_enabled=False)
    await env.register()
    env.add(final_after_s=0, outcome="ready")
    assert await env.dispatch() == 0
    assert due_deliveries(env.emulator.store, rfc3339.to_us(T0 + 1)) == []
    env.emulator.configure(webhooks_enabled=True)
    assert await env.dispatch() == 1
    await env.api.delete(WEBHOOK)
    env.add(final_after_s=0, outcome="ready")
    assert await env.dispatch() == 0
    assert env.emulator.webhook_deliveries() == []
    assert len(env.receiver.deliveries) == 1


async def test_due_deliveries_come_by_finishing_time(env: Env) -> None:
    await env.register()
    uids = [env.add(final_after_s=s, outcome="ready") for s in (30, 10, 20, 0)]
    env.emulator.advance_clock(30)
    due = due_deliveries(env.emulator.store, rfc3339.to_us(T0 + 30))
    assert [r["uid"] for r in due] == [uids[3], uids[1], uids[2], uids[0]]
    assert [r["attempts"] for r in due] == [0, 0, 0, 0]


async def test_up_to_sixteen_deliveries_are_in_flight_at_once(env: Env) -> None:
    """The receiver holds every request until sixteen are waiting: the dispatcher gets there
    (it does not send one by one) and never beyond (the 17th waits for a free slot)."""
    in_flight = peak = 0
    full = asyncio.Event()
    delivered: list[str] = []

    async def hook(request: Request) -> Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= 16:
            # Released on the loop's next round, not now: a 17th request the dispatcher let
            # through would arrive first.
            asyncio.get_running_loop().call_soon(full.set)
        try:
            await full.wait()
            delivered.append(json.loads(await request.body())["uid"])
        finally:
            in_flight -= 1
        return Response(status_code=200)

    await env.register()
    uids = env.emulator.add_videos([{"final_after_s": 0, "outcome": "ready"} for _ in range(40)])
    app = Starlette(routes=[Route("/hooks/stream", hook, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        async with asyncio.timeout(60):
            assert await env.emulator.dispatch_webhooks(client, wall_clock=lambda: WALL) == 40
    assert peak == 16
    assert sorted(delivered) == sorted(uids)


async def test_a_video_registered_again_is_notified_of_its_new_outcome(env: Env) -> None:
    await env.register()
    uid = env.add(final_after_s=0, outcome="error")
    assert await env.dispatch() == 1
    env.emulator.add_videos([{"uid": uid, "final_after_s": 5, "outcome": "ready"}])
    assert await env.dispatch() == 0
    env.emulator.advance_clock(5)
    assert await env.dispatch() == 1
    states = [d.video()["status"]["state"] for d in env.receiver.deliveries]
    assert states == ["error", "ready"]


async def test_reset_forgets_the_webhook_and_its_deliveries(env: Env) -> None:
    await env.register()
    env.add(final_after_s=0, outcome="ready")
    assert await env.dispatch() == 1
    env.emulator.reset(keep_config=True)
    assert env.emulator.webhook() is None
    assert env.emulator.webhook_deliveries() == []


def test_a_state_from_before_webhooks_gets_their_tables(tmp_path: Path) -> None:
    state_dir = tmp_path / "old-state"
    state_dir.mkdir()
    old = sqlite3.connect(state_dir / DB_FILENAME)
    old.execute("CREATE TABLE config (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)")
    old.execute("INSERT INTO config (id, body) VALUES (1, '{\"seed\": 7}')")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()

    store = StateStore(state_dir)
    assert store.config().seed == 7
    conn = store.connection()
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"webhook", "webhook_deliveries", "videos"} <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert stream_webhooks.get_webhook(store) is None


# -- the dispatcher loop ----------------------------------------------------------------------------


async def test_run_dispatcher_delivers_until_stopped(env: Env) -> None:
    await env.register()
    uid = env.add(final_after_s=0, outcome="ready")
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_dispatcher(env.emulator.store, interval_s=0.01, client=env.receiver_client, stop=stop)
    )
    async with asyncio.timeout(60):
        await env.receiver.arrived.wait()
        stop.set()
        await task
    assert env.receiver.uids() == [uid]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def dispatcher_log() -> Iterator[_Lines]:
    """What the dispatcher logs, tracebacks included (on its own logger: the project's stderr
    logger above it does not propagate to pytest's capture)."""
    handler = _Lines()
    stream_webhooks.log.addHandler(handler)
    try:
        yield handler
    finally:
        stream_webhooks.log.removeHandler(handler)


async def test_run_dispatcher_goes_on_after_a_failed_pass(
    env: Env, monkeypatch: pytest.MonkeyPatch, dispatcher_log: _Lines
) -> None:
    stop = asyncio.Event()
    passes = 0

    async def flaky(store: StateStore, client: httpx.AsyncClient, **_: Any) -> int:
        nonlocal passes
        passes += 1
        if passes == 1:
            raise sqlite3.OperationalError("database is locked")
        if passes == 3:
            stop.set()
        return 0

    monkeypatch.setattr(stream_webhooks, "dispatch_due", flaky)
    env.emulator.configure(webhook_secret=CUSTOM_SECRET)
    await env.register()
    async with asyncio.timeout(60):
        await run_dispatcher(
            env.emulator.store, interval_s=0, client=env.receiver_client, stop=stop
        )
    assert passes == 3
    text = "\n".join(dispatcher_log.lines)
    assert "dispatch pass failed" in text and "database is locked" in text
    assert CUSTOM_SECRET not in text


# -- alianza-jobs emulate ---------------------------------------------------------------------------


class _RecordingHandler(BaseHTTPRequestHandler):
    received: list[Delivery]
    arrived: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.received.append(Delivery(body, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        self.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output to the test's own


@pytest.fixture
def real_receiver() -> Iterator[tuple[str, type[_RecordingHandler]]]:
    handler = type("Handler", (_RecordingHandler,), {"received": [], "arrived": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=60)


def test_emulate_posts_deliveries_to_a_real_receiver(
    tmp_path: Path, real_receiver: tuple[str, type[_RecordingHandler]]
) -> None:
    url, handler = real_receiver
    state_dir = tmp_path / "state"
    home = tmp_path / "home"
    home.mkdir()
    emulator = StreamEmulator(state_dir)
    emulator.update_config({"frozen_clock_s": time.time()})
    server = start_emulate(state_dir, env={"DAGSTER_HOME": str(home)})
    try:
        assert server.process.stdout is not None
        assert "webhook deliveries are on" in server.process.stdout.readline()
        registered = httpx.put(
            f"{server.root}/client/v4{WEBHOOK}",
            json={"notificationUrl": url},
            headers=STREAM_AUTH,
            timeout=30,
        )
        assert registered.status_code == 200, registered.text
        secret = registered.json()["result"]["secret"]
        (uid,) = emulator.add_videos([{"final_after_s": 0, "outcome": "ready"}])
        assert handler.arrived.wait(timeout=60), "no delivery reached the receiver"
    finally:
        stop(server)
    (delivery,) = handler.received
    verify_stream_webhook(delivery.body, delivery.headers["webhook-signature"], secret)
    assert delivery.video()["uid"] == uid
    assert delivery.video() == emulator.get(uid, account_id=ACCOUNT)


@pytest.mark.parametrize(("flag", "dispatching"), [([], True), (["--no-webhooks"], False)])
def test_no_webhooks_leaves_the_dispatcher_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], dispatching: bool
) -> None:
    started: list[StateStore | None] = []

    class FakeServer:
        def run(self, sockets: list[socket.socket]) -> None:
            for sock in sockets:
                sock.close()

    def fake_server(config: Any, webhook_store: StateStore | None) -> FakeServer:
        started.append(webhook_store)
        return FakeServer()

    monkeypatch.setattr(emulate_cli, "_server", fake_server)
    result = CliRunner().invoke(
        emulate_cli.emulate_command, ["--state-dir", str(tmp_path), "--port", "0", *flag]
    )
    assert result.exit_code == 0, result.output
    assert (started[0] is not None) is dispatching
    assert ("webhook deliveries are on" in result.output) is dispatching
    assert ("webhook deliveries are off" in result.output) is not dispatching


def test_the_drop_rate_loses_the_same_videos_every_time() -> None:
    from alianza_jobs.emulators.stream_webhooks import lost_on_the_way

    uids = [f"{i:032x}" for i in range(2000)]
    lost = [uid for uid in uids if lost_on_the_way(uid, 0.25)]
    assert 400 < len(lost) < 600
    assert lost == [uid for uid in uids if lost_on_the_way(uid, 0.25)]
    assert not any(lost_on_the_way(uid, 0.0) for uid in uids)
    assert all(lost_on_the_way(uid, 1.0) for uid in uids)
