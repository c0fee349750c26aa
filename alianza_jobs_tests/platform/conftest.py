from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REQUIRE_PUSHGATEWAY = os.environ.get("ALIANZA_REQUIRE_PUSHGATEWAY", "") == "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on a free loopback port."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        if REQUIRE_PUSHGATEWAY:
            pytest.fail("ALIANZA_REQUIRE_PUSHGATEWAY=1 but prometheus-pushgateway is not installed")
        pytest.skip(
            "prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)"
        )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={tmp_path / 'pg.data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("the Pushgateway did not become ready")
            time.sleep(0.05)  # polling for readiness, bounded by the deadline above
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)  # a loaded machine can take seconds to get round to it
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
