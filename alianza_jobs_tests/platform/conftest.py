from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from alianza_jobs_tests.processes import free_port, stop_process, wait_until_answers

REQUIRE_PUSHGATEWAY = os.environ.get("ALIANZA_REQUIRE_PUSHGATEWAY", "") == "1"


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
        wait_until_answers(f"{url}/-/ready", proc, timeout_s=60, what="the Pushgateway")
        yield url
    finally:
        stop_process(proc)
