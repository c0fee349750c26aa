"""The web UI, rendered by headless Chromium: every job and every schedule's cron is on its page.

Routes of Dagster 1.13's UI (from its bundled router): ``/jobs`` lists every job of every code
location; ``/automation`` lists schedules and sensors (the cron shows there only humanised, "Every
minute", with the expression in a tooltip); a schedule's own page,
``/locations/<repository>@<location>/schedules/<name>``, prints "Every minute (* * * * *)".

The expected names and crons come from ``alianza-jobs jobs --json`` run with the deployment's
environment (what the code says) and from GraphQL for the suite's own location. Screenshots go to
``test-artifacts/e2e/ui/``. Skipped without ``chromium`` unless ``ALIANZA_REQUIRE_CHROMIUM=1``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alianza_jobs_tests.e2e.harness import ARTIFACTS, Deployment, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium")
REQUIRE_CHROMIUM = os.environ.get("ALIANZA_REQUIRE_CHROMIUM", "") == "1"
SHOTS = ARTIFACTS / "ui"


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if REQUIRE_CHROMIUM:
            pytest.fail("ALIANZA_REQUIRE_CHROMIUM=1 but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def render(chromium: str, url: str, screenshot: Path) -> str:
    """The page's text once the SPA has rendered (DOM dumped after the virtual time budget)."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="alianza-chromium-") as profile:
        result = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=20000",
                "--window-size=1440,1000",
                f"--screenshot={screenshot}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return visible_text(result.stdout)


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def render_until(chromium: str, url: str, screenshot: Path, expected: list[str]) -> str:
    """Render again (a cold UI may answer before its data) until every expected text is there."""
    text = ""

    def complete() -> bool:
        nonlocal text
        text = render(chromium, url, screenshot)
        return all(e in text for e in expected)

    try:
        wait_for(f"{url} to show {expected}", complete, timeout=90, interval=1)
    except AssertionError:
        missing = [e for e in expected if e not in text]
        raise AssertionError(f"{url} does not show {missing}; page text: {text[:3000]}") from None
    return text


def test_jobs_and_schedules_pages_show_every_job_and_cron(
    deployment: Deployment, chromium: str
) -> None:
    listed = deployment.cli("jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    code = {info["name"]: info["cron"] for info in map(json.loads, listed.stdout.splitlines())}
    served = deployment.definitions()
    # The UI's location holds exactly the jobs the code location declares, with their crons.
    real = {name: job for name, job in served.items() if job["location"] == "alianza_jobs"}
    assert set(real) == set(code)
    for name, cron in code.items():
        assert list(real[name]["schedules"].values()) == ([cron] if cron else []), name

    render_until(chromium, f"{deployment.url}/jobs", SHOTS / "jobs.png", sorted(served))

    schedules = {
        schedule: (cron, job["location"], job["repository"])
        for job in served.values()
        for schedule, cron in job["schedules"].items()
    }
    render_until(
        chromium, f"{deployment.url}/automation", SHOTS / "automation.png", sorted(schedules)
    )

    def schedule_page(name: str) -> tuple[str, str, str]:
        cron, location, repository = schedules[name]
        url = f"{deployment.url}/locations/{repository}@{location}/schedules/{name}"
        text = render_until(chromium, url, SHOTS / f"schedule-{name}.png", [name, f"({cron})"])
        return name, cron, text

    with ThreadPoolExecutor(max_workers=3) as pool:
        pages = list(pool.map(schedule_page, sorted(schedules)))
    for name, cron, text in pages:
        assert f"({cron})" in text and "Execution timezone UTC" in text, name
