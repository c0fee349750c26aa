"""One production-shaped deployment for the whole e2e package (starting it costs ~30 s).

Fresh Postgres databases for Dagster's storage and for the app, ``deploy/dagster.yaml`` with the
few test overrides in :data:`~alianza_jobs_tests.e2e.harness.TEST_OVERRIDES`, a workspace with the
real code location and the suite's own (:mod:`alianza_jobs_tests.e2e.location`), the app in
``ALIANZA_ENV=prod`` against ``alianza-jobs emulate`` on a loopback port, and its alerts posted to
a webhook the suite runs (:class:`~alianza_jobs_tests.e2e.harness.AlertReceiver`). The tests share
it and each waits for its own conditions, so the minute-boundary waits of the schedule tests overlap.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from alianza_jobs_tests.e2e.harness import (
    BIN,
    PRODUCTION_WORKSPACE,
    REPO,
    AlertReceiver,
    Deployment,
    Service,
    procfile_argv,
    production_config,
)
from alianza_jobs_tests.processes import free_port

SUITE_STARTED = time.monotonic()

# The environment the app needs in prod (fake credentials: the emulator requires exactly these).
ACCOUNT_ID = "e2e0account0000000000000000000001"
STREAM_TOKEN = f"cf-e2e-{secrets.token_hex(12)}"
RESEND_KEY = f"re_e2e_{secrets.token_hex(12)}"
# Postgres here trusts loopback connections and ignores it; the suite checks it never lands in a
# file or a log (it would in a DSN written into dagster.yaml).
DAGSTER_PG_PASSWORD = f"pg-e2e-{secrets.token_hex(12)}"
EMAIL_FROM = "Alianza <jobs@alianza.test>"
# What the emulated Stream signs its webhooks with, as `webhooks register` hands it over.
WEBHOOK_SECRET = f"whsec-e2e-{secrets.token_hex(12)}"
# A cron that does not fire while the suite runs (unless it runs at midnight on New Year's Day).
QUIET_CRON = "0 0 1 1 *"
# stream_videos' freshness window in the suite: twice its minutely tick, so a tick that comes late
# on a loaded machine does not make it flap (Dagster's shortest window is one minute).
FRESHNESS_WINDOW_S = 120


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts real processes; minutes, not seconds")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            # dagster-graphql 1.13's client still calls gql 4 the old way; not ours to fix.
            item.add_marker(
                pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")
            )


def _workspace(root: Path) -> int:
    """``deploy/workspace.yaml`` at the same relative path the Procfile uses, plus the suite's own
    code locations (not installed: loaded from the repository). Returns how many there are."""
    workspace = yaml.safe_load(PRODUCTION_WORKSPACE.read_text())
    for module, location in (
        ("alianza_jobs_tests.e2e.location", "e2e"),
        ("alianza_jobs_tests.e2e.crash_location", "e2e_crash"),
    ):
        workspace["load_from"].append(
            {
                "python_module": {
                    "module_name": module,
                    "location_name": location,
                    "working_directory": str(REPO),
                }
            }
        )
    (root / "deploy").mkdir()
    (root / "deploy" / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    return len(workspace["load_from"])


@pytest.fixture(scope="package")
def alert_receiver() -> Iterator[AlertReceiver]:
    """Where the deployment's alerts go (ALERT_WEBHOOK_URL): no ALERT_EMAIL_TO, so alerts add no
    rows to the email queue whose deliveries the daemon crash test counts."""
    receiver = AlertReceiver.start()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="package")
def deployment(
    make_postgres_database: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
    alert_receiver: AlertReceiver,
) -> Iterator[Deployment]:
    dagster_db = make_postgres_database()
    app_db = make_postgres_database()
    root = tmp_path_factory.mktemp("deployment")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(production_config(), sort_keys=False))
    locations = _workspace(root)
    logs = root / "logs"
    logs.mkdir()
    emulator_state = root / "emulators"
    e2e_state = root / "e2e-state"
    emulator_port, web_port, webhooks_port = free_port(), free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    pg = _pg_parts(dagster_db)

    keep = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
    env = {
        **{k: v for k, v in os.environ.items() if k in keep},
        # The Procfile names the commands; the virtualenv's come first, as on an installed host.
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOST": "127.0.0.1",
        "PORT": str(web_port),
        "PYTHONUNBUFFERED": "1",
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": pg["host"],
        "DAGSTER_PG_PORT": pg["port"],
        "DAGSTER_PG_USERNAME": pg["user"],
        "DAGSTER_PG_PASSWORD": DAGSTER_PG_PASSWORD,
        "DAGSTER_PG_DB": pg["dbname"],
        "ALIANZA_ENV": "prod",
        "DATABASE_URL": app_db,
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID,
        "CLOUDFLARE_STREAM_API_TOKEN": STREAM_TOKEN,
        "CLOUDFLARE_API_BASE_URL": f"{emulator_url}/client/v4",
        "RESEND_API_KEY": RESEND_KEY,
        "RESEND_API_BASE_URL": emulator_url,
        "EMAIL_FROM": EMAIL_FROM,
        "DAGSTER_WEBSERVER_URL": f"http://127.0.0.1:{web_port}",
        "REPORTS_DIR": str(root / "reports"),
        "LOG_LEVEL": "info",
        # The schedule test needs a real job bound to `* * * * *` whatever is wired in by now.
        "ALIANZA_CRON_CLEANUP_EXPIRED_SESSIONS": "* * * * *",
        "ALIANZA_E2E_STATE_DIR": str(e2e_state),
        # The receiver, as deploy/Procfile starts it, and where the doctor finds it.
        "WEBHOOKS_PORT": str(webhooks_port),
        "ALIANZA_WEBHOOKS_URL": f"http://127.0.0.1:{webhooks_port}",
        "CLOUDFLARE_STREAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # The emulator requires exactly these, as the real APIs require valid ones.
        "ALIANZA_EMULATOR_REQUIRE_TOKEN": STREAM_TOKEN,
        "ALIANZA_EMULATOR_REQUIRE_RESEND_KEY": RESEND_KEY,
        "ALERT_WEBHOOK_URL": alert_receiver.url,
        # The freshness test (test_freshness.py) turns the catalog sync's schedule off and waits
        # for stream_videos to go stale: a minutely tick (nothing due keeps it fresh: the probe is
        # on, whatever the default becomes), a 2-minute window, the daemon looking every 5 s. The
        # other tables keep the windows their crons give them, far longer than the suite.
        "ALIANZA_EVENT_TRIGGERS": "true",
        "ALIANZA_CRON_SYNC_STREAM_CATALOG": "* * * * *",
        "ALIANZA_FRESHNESS_STREAM_VIDEOS_SECONDS": str(FRESHNESS_WINDOW_S),
        "FRESHNESS_DAEMON_INTERVAL_SECONDS": "5",
    }
    # The daemon crash test needs the email queue's rows to be sent by the runs it launches (slowly,
    # in small batches), not by a scheduled run that sends them all in a second: keep the real
    # schedule (if the job is wired in yet) from firing while the suite runs.
    if "process_email_queue" in _job_names(env, root):
        env["ALIANZA_CRON_PROCESS_EMAIL_QUEUE"] = QUIET_CRON
    deployment = Deployment(
        root=root,
        home=home,
        env=env,
        port=web_port,
        emulator_url=emulator_url,
        emulator_state_dir=emulator_state,
        e2e_state_dir=e2e_state,
        locations=locations,
        app_db_url=app_db,
        dagster_db_url=dagster_db,
        emulator=Service(
            "emulator",
            [
                str(BIN / "alianza-jobs"),
                "emulate",
                "--port",
                str(emulator_port),
                "--state-dir",
                str(emulator_state),
                "--require-account",
                ACCOUNT_ID,
            ],
            env,
            root,
            logs,
        ),
        # The processes as deploy/Procfile declares them, started from the installation root.
        daemon=Service("daemon", procfile_argv("daemon"), env, root, logs),
        webserver=Service("webserver", procfile_argv("web"), env, root, logs),
        webhooks=Service("webhooks", procfile_argv("webhooks"), env, root, logs),
        webhook_secret=WEBHOOK_SECRET,
    )
    # The test process reads the same instance: deploy/dagster.yaml resolves DAGSTER_PG_* here too.
    with pytest.MonkeyPatch.context() as mp:
        for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_DB"):
            mp.setenv(name, env[name])
        mp.setenv("DAGSTER_PG_PASSWORD", DAGSTER_PG_PASSWORD)
        try:
            deployment.start()
            print(f"\ne2e: deployment ready in {deployment.startup_s:.0f} s")
            yield deployment
        finally:
            deployment.stop()
            elapsed = time.monotonic() - SUITE_STARTED
            print(f"\ne2e: deployment up and torn down; suite so far {elapsed:.0f} s")


def _job_names(env: dict[str, str], cwd: Path) -> set[str]:
    listed = subprocess.run(
        [str(BIN / "alianza-jobs"), "jobs", "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    return {json.loads(line)["name"] for line in listed.stdout.splitlines()}


def _pg_parts(url: str) -> dict[str, str]:
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)
    return {
        "host": str(info.get("host") or "127.0.0.1"),
        "port": str(info.get("port") or 5432),
        "user": str(info.get("user") or "postgres"),
        "dbname": str(info["dbname"]),
    }
