"""The emulator under test, two ways: in-process (``httpx.ASGITransport``) and over a real socket
(``alianza-jobs emulate`` started as a subprocess). Tests taking the ``emulator`` fixture run
against both and talk to them only through HTTP, so they prove the same behaviour either way.

The socket server is started once per session on a free port; each test starts from a clean state
through the admin reset route. In-process tests get a fresh state directory each. Either way the
emulated clock is frozen at the test's start (``frozen_clock_s``): only ``advance`` moves it, so
video states, rate-limit windows and penalties never depend on how long a loaded machine takes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from alianza_jobs.emulators import STREAM_PREFIX, combined_app
from alianza_jobs_tests.processes import stop_process

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
TOKEN = "test-stream-token"
RESEND_KEY = "re_test_key_123"
STREAM_AUTH = {"Authorization": f"Bearer {TOKEN}"}
RESEND_AUTH = {"Authorization": f"Bearer {RESEND_KEY}"}
STARTUP_DEADLINE_S = 60.0


def cli_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("alianza-jobs")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from alianza_jobs.cli import main; main()", *args]


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    root: str
    stdout_lines: list[str]
    state_dir: Path


def start_emulate(state_dir: Path, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``alianza-jobs emulate --port 0`` and wait until it answers its health route."""
    stderr_path = state_dir.parent / f"emulate-{os.getpid()}-{time.monotonic_ns()}.stderr"
    stderr = stderr_path.open("w")
    process = subprocess.Popen(
        cli_command("emulate", "--port", "0", "--state-dir", str(state_dir), *extra),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    lines: list[str] = []
    root = None
    assert process.stdout is not None
    while root is None:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(
                f"alianza-jobs emulate did not start: {lines} {stderr_path.read_text()[-2000:]}"
            )
        line = process.stdout.readline()
        lines.append(line.rstrip())
        match = re.search(r"on (http://[\d.]+:\d+) ", line)
        if match:
            root = match.group(1)
    for _ in range(4):  # the remaining banner lines
        lines.append(process.stdout.readline().rstrip())
    while True:
        try:
            if httpx.get(f"{root}/_emulator/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("alianza-jobs emulate never answered its health route")
        time.sleep(0.05)
    return ServerProcess(process, root, lines, state_dir)


def stop(server: ServerProcess) -> None:
    stop_process(server.process)


@pytest.fixture(scope="session")
def emulate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("emulate")
    home = base / "dagster_home"
    home.mkdir()
    server = start_emulate(base / "state", env={"DAGSTER_HOME": str(home)})
    yield server
    stop(server)


@dataclass
class Emulator:
    """One emulator reached over HTTP, with helpers for its admin routes."""

    mode: str
    root: str
    state_dir: Path
    client: httpx.AsyncClient
    app: Any | None

    @property
    def stream_base(self) -> str:
        return f"{self.root}{STREAM_PREFIX}"

    def new_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """Another client to the same emulator (for SDKs that want their own)."""
        if self.app is not None:
            kwargs.setdefault("transport", httpx.ASGITransport(app=self.app))
        return httpx.AsyncClient(**kwargs)

    def video_url(self, uid: str = "", account: str = ACCOUNT) -> str:
        base = f"{self.stream_base}/accounts/{account}/stream"
        return f"{base}/{uid}" if uid else base

    async def admin(self, method: str, path: str, json: Any = None) -> Any:
        response = await self.client.request(method, f"{self.root}/_emulator{path}", json=json)
        assert response.status_code == 200, response.text
        return response.json()

    async def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("PATCH", "/config", patch)
        return result

    async def advance(self, seconds: float) -> None:
        await self.admin("POST", "/clock/advance", {"seconds": seconds})

    async def add_videos(self, *videos: dict[str, Any]) -> list[str]:
        result = await self.admin("POST", "/stream/videos", {"videos": list(videos)})
        return list(result["uids"])

    async def inbox(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("GET", "/resend/inbox")
        return result

    async def counters(self) -> dict[tuple[str, str, int], int]:
        result = await self.admin("GET", "/counters")
        return {(c["service"], c["endpoint"], c["status"]): c["count"] for c in result["counters"]}

    async def get_video(self, uid: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", STREAM_AUTH)
        return await self.client.get(self.video_url(uid), **kwargs)

    async def list_videos(self, **params: Any) -> httpx.Response:
        return await self.client.get(self.video_url(), params=params, headers=STREAM_AUTH)

    async def send(self, email: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(
            f"{self.root}/emails", json=email, headers={**RESEND_AUTH, **(headers or {})}
        )

    async def send_batch(
        self, emails: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.post(
            f"{self.root}/emails/batch", json=emails, headers={**RESEND_AUTH, **(headers or {})}
        )


@pytest.fixture(params=["inprocess", "socket"])
async def emulator(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Emulator]:
    if request.param == "inprocess":
        state_dir = tmp_path / "emulator-state"
        app = combined_app(state_dir)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            emulator = Emulator("inprocess", "http://emulator.local", state_dir, client, app)
            await emulator.configure({"frozen_clock_s": time.time()})
            yield emulator
        return
    server: ServerProcess = request.getfixturevalue("emulate_server")
    async with httpx.AsyncClient(timeout=30) as client:
        emulator = Emulator("socket", server.root, server.state_dir, client, None)
        await emulator.admin("POST", "/reset")
        await emulator.configure({"frozen_clock_s": time.time()})
        yield emulator


def email(to: str = "ana@example.com", subject: str = "Hola", **extra: Any) -> dict[str, Any]:
    return {
        "from": "Alianza <jobs@alianza.dev>",
        "to": [to],
        "subject": subject,
        "html": f"<p>{subject}</p>",
        "text": subject,
        **extra,
    }
