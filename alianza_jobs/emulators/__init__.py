"""Emulators of the Cloudflare Stream and Resend APIs, for development, tests and benchmarks.

They speak the real wire formats, model latency, rate limits, faults and state that changes over
time, and keep their state in files under a state directory so every process (each Dagster run is
one) sees the same videos and inbox. In-process, ``httpx.ASGITransport(app=combined_app(state_dir))``
serves Stream at ``IN_PROCESS_STREAM_BASE_URL`` and Resend at ``IN_PROCESS_RESEND_BASE_URL``; over
a socket, ``alianza-jobs emulate --port 8787``; :class:`StreamEmulator` and :class:`ResendEmulator`
steer the same state from any process. The names below load on first use, so importing
``alianza_jobs.emulators.constants`` does not load Starlette.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from alianza_jobs.emulators.constants import (
    ADMIN_PREFIX,
    EMULATOR_ACCOUNT_ID,
    EMULATOR_API_KEY,
    EMULATOR_STREAM_TOKEN,
    IN_PROCESS_RESEND_BASE_URL,
    IN_PROCESS_ROOT,
    IN_PROCESS_STREAM_BASE_URL,
    STREAM_PREFIX,
)

if TYPE_CHECKING:
    from alianza_jobs.emulators.app import combined_app, resend_app, stream_app
    from alianza_jobs.emulators.config import EmulatorConfig, ResendSettings, StreamSettings
    from alianza_jobs.emulators.control import EmulatorControl
    from alianza_jobs.emulators.resend import ResendEmulator
    from alianza_jobs.emulators.resend_store import DeliveredEmail
    from alianza_jobs.emulators.state import Counter
    from alianza_jobs.emulators.stream import StreamEmulator
    from alianza_jobs.emulators.stream_videos import VideoSpec

_LAZY = {
    "combined_app": "app",
    "resend_app": "app",
    "stream_app": "app",
    "EmulatorConfig": "config",
    "ResendSettings": "config",
    "StreamSettings": "config",
    "EmulatorControl": "control",
    "DeliveredEmail": "resend_store",
    "ResendEmulator": "resend",
    "Counter": "state",
    "StreamEmulator": "stream",
    "VideoSpec": "stream_videos",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
    "resend_app",
    "stream_app",
]
