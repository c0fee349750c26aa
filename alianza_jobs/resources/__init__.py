"""Resources per environment, keyed by ``ALIANZA_ENV`` as Dagster's reference projects do.

Secrets reach resources only as ``dagster.EnvVar``: Dagster resolves them when a run starts, and the
UI shows the variable's name, never its value. In ``local`` with no token set, Stream and Resend are
served in-process by our emulators (state under ``DAGSTER_HOME/emulators``), so ``make dev`` works
with no network and no accounts; set a token (and a base URL) and the same code talks to the real
service.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import EnvVar

from alianza_jobs.resources.app import AppConfig, ReportStorage
from alianza_jobs.resources.database import Database
from alianza_jobs.resources.resend import ResendEmail
from alianza_jobs.resources.stream import CloudflareStream
from alianza_jobs.settings import Settings

EMULATOR_BASE = "http://emulator.local"
# The emulator takes any account id; this one matches its default (importing the emulator package
# here would put Starlette on the import path of every code-location load).
EMULATOR_ACCOUNT_ID = "e" * 32
EMULATOR_TOKEN = "local-emulator-token"  # noqa: S105  # the in-process emulator's, not a secret
EMULATOR_RESEND_KEY = "re_local_emulator_key"


def emulator_state_dir(settings: Settings) -> Path:
    return settings.state_dir / "emulators"


def _database(settings: Settings) -> Database:
    # The URL may carry a password: from the environment as EnvVar, so the UI shows the name only.
    if os.environ.get("DATABASE_URL", "").strip():
        return Database(url=EnvVar("DATABASE_URL"))
    return Database(url=settings.database_url)


def _stream(settings: Settings) -> CloudflareStream:
    if settings.stream_emulated:
        return CloudflareStream(
            account_id=EMULATOR_ACCOUNT_ID,
            api_token=EMULATOR_TOKEN,
            base_url=f"{EMULATOR_BASE}/client/v4",
            emulator_state_dir=str(emulator_state_dir(settings)),
        )
    return CloudflareStream(
        account_id=EnvVar("CLOUDFLARE_ACCOUNT_ID"),
        api_token=EnvVar("CLOUDFLARE_STREAM_API_TOKEN"),
        base_url=settings.cloudflare_api_base_url,
    )


def _resend(settings: Settings) -> ResendEmail:
    if settings.resend_emulated:
        return ResendEmail(
            api_key=EMULATOR_RESEND_KEY,
            base_url=EMULATOR_BASE,
            emulator_state_dir=str(emulator_state_dir(settings)),
        )
    return ResendEmail(api_key=EnvVar("RESEND_API_KEY"), base_url=settings.resend_api_base_url)


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "database": _database(settings),
        "stream": _stream(settings),
        "resend": _resend(settings),
        "app": AppConfig(
            email_from=settings.email_from,
            alert_email_to=settings.alert_email_to,
            # A webhook URL embeds its own credential: EnvVar, so the UI shows the name only.
            alert_webhook_url=EnvVar("ALERT_WEBHOOK_URL")
            if os.environ.get("ALERT_WEBHOOK_URL", "").strip()
            else None,
            webserver_url=settings.webserver_url,
        ),
        "reports": ReportStorage(directory=str(settings.reports_dir)),
    }


# One entry per environment. They share a shape today; the dict is where an environment that needs
# a different resource (a read replica, a sandbox API) gets it without touching any task.
RESOURCES_BY_ENV: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "local": _common,
    "dev": _common,
    "uat": _common,
    "prod": _common,
}


def build_resources(settings: Settings) -> dict[str, Any]:
    return RESOURCES_BY_ENV[settings.env.value](settings)
