"""Processes the tests start (emulator servers, the Pushgateway, ``tail --follow``): waiting until
one answers, and stopping it, with the bounds a loaded 2-core machine needs."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import httpx

STOP_GRACE_S = 60.0  # a loaded machine can take seconds to get round to a SIGTERM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answers(
    url: str, proc: subprocess.Popen[Any], *, timeout_s: float, what: str
) -> None:
    """Poll ``url`` until it answers 200; AssertionError naming ``what`` if ``proc`` exits first
    or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"{what} exited with {proc.returncode} before it answered"
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout_s:g} s"
        time.sleep(0.05)  # polling for readiness, bounded by the deadline above


def stop_process(proc: subprocess.Popen[Any], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, up to ``grace_s`` to exit, then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
