"""Emulators of the Cloudflare Stream and Resend APIs, for development, tests and benchmarks.

They speak the real wire formats (checked against the official SDKs' response models), model
latency, rate limits, faults and state that changes over time, and keep their state in files under
a state directory so every process (each Dagster run is one) sees the same videos and inbox.

In-process::

    transport = httpx.ASGITransport(app=combined_app(state_dir))
    httpx.AsyncClient(transport=transport, base_url="http://emulator.local/client/v4")  # Stream
    httpx.AsyncClient(transport=transport, base_url="http://emulator.local")            # Resend

Over a socket: ``alianza-jobs emulate --port 8787``. Steering from Python:
:class:`StreamEmulator` and :class:`ResendEmulator` (same state directory, any process).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from alianza_jobs.emulators.app import (
    ADMIN_PREFIX,
    STREAM_PREFIX,
    combined_app,
    resend_app,
    stream_app,
)
from alianza_jobs.emulators.config import EmulatorConfig, ResendSettings, StreamSettings
from alianza_jobs.emulators.control import EmulatorControl
from alianza_jobs.emulators.resend import EMULATOR_API_KEY, DeliveredEmail, ResendEmulator
from alianza_jobs.emulators.state import Counter
from alianza_jobs.emulators.stream import EMULATOR_ACCOUNT_ID, StreamEmulator, VideoSpec

IN_PROCESS_ROOT = "http://emulator.local"
IN_PROCESS_STREAM_BASE_URL = f"{IN_PROCESS_ROOT}{STREAM_PREFIX}"
IN_PROCESS_RESEND_BASE_URL = IN_PROCESS_ROOT
EMULATOR_STREAM_TOKEN = "emulator-stream-token"  # noqa: S105 - not a secret: any token works
"""A token for local use; the Stream emulator accepts any unless told to require one."""


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$DAGSTER_HOME/emulators`` (the same default DAGSTER_HOME the settings use)."""
    from alianza_jobs.settings import default_dagster_home

    env = os.environ if environ is None else environ
    home = env.get("DAGSTER_HOME") or str(default_dagster_home())
    return Path(home) / "emulators"


__all__ = [
    "ADMIN_PREFIX",
    "EMULATOR_ACCOUNT_ID",
    "EMULATOR_API_KEY",
    "EMULATOR_STREAM_TOKEN",
    "IN_PROCESS_RESEND_BASE_URL",
    "IN_PROCESS_ROOT",
    "IN_PROCESS_STREAM_BASE_URL",
    "STREAM_PREFIX",
    "Counter",
    "DeliveredEmail",
    "EmulatorConfig",
    "EmulatorControl",
    "ResendEmulator",
    "ResendSettings",
    "StreamEmulator",
    "StreamSettings",
    "VideoSpec",
    "combined_app",
    "default_state_dir",
    "resend_app",
    "stream_app",
]
