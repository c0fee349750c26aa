"""``alianza-jobs emulate``: what it prints, its flags, and its state seen from another process."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from click.testing import CliRunner

from alianza_jobs.cli.emulate import emulate_command
from alianza_jobs.emulators import ResendEmulator, StreamEmulator
from alianza_jobs_tests.emulators.conftest import (
    RESEND_AUTH,
    ServerProcess,
    email,
    start_emulate,
    stop,
)


def test_prints_the_two_base_urls(emulate_server: ServerProcess) -> None:
    root = emulate_server.root
    assert root.startswith("http://127.0.0.1:")
    banner = "\n".join(emulate_server.stdout_lines)
    assert f"CLOUDFLARE_API_BASE_URL={root}/client/v4" in banner
    assert f"RESEND_API_BASE_URL={root}\n" in banner + "\n"


def test_state_written_over_the_socket_is_read_from_this_process(
    emulate_server: ServerProcess,
) -> None:
    httpx.post(f"{emulate_server.root}/_emulator/reset").raise_for_status()
    sent = httpx.post(
        f"{emulate_server.root}/emails", json=email(subject="via socket"), headers=RESEND_AUTH
    )
    assert sent.status_code == 200
    (delivered,) = ResendEmulator(emulate_server.state_dir).inbox()
    assert delivered.id == sent.json()["id"]
    assert delivered.subject == "via socket"

    # And the other way round: a video registered here is served there.
    (uid,) = StreamEmulator(emulate_server.state_dir).add_videos(["d" * 32])
    got = httpx.get(
        f"{emulate_server.root}/client/v4/accounts/x/stream/{uid}",
        headers={"Authorization": "Bearer t"},
    )
    assert got.status_code == 200
    assert got.json()["result"]["uid"] == uid


def test_flags_apply_to_that_server_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = "flag-token-1234"
    server = start_emulate(
        state,
        "--require-account",
        "a" * 32,
        "--seed-videos",
        "3",
        env={"ALIANZA_EMULATOR_REQUIRE_TOKEN": token, "DAGSTER_HOME": str(tmp_path)},
    )
    try:
        stream = f"{server.root}/client/v4/accounts"
        right = {"Authorization": f"Bearer {token}"}
        listed = httpx.get(f"{stream}/{'a' * 32}/stream", headers=right)
        assert listed.status_code == 200
        assert len(listed.json()["result"]) == 3
        wrong = httpx.get(f"{stream}/{'a' * 32}/stream", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        assert httpx.get(f"{stream}/{'b' * 32}/stream", headers=right).status_code == 403
        assert token not in "\n".join(server.stdout_lines)
    finally:
        stop(server)
    # Not written into the state: the next server, or a run in-process, is not bound by them.
    stored = StreamEmulator(state).config().stream
    assert stored.required_token_sha256 is None
    assert stored.required_account is None
    assert StreamEmulator(state).count() == 3


def test_bad_setting_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        emulate_command, ["--state-dir", str(tmp_path), "--error-rate", "3", "--port", "0"]
    )
    assert result.exit_code == 2
    assert "invalid emulator setting" in result.output


def test_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            emulate_command, ["--state-dir", str(tmp_path), "--port", str(port)]
        )
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
