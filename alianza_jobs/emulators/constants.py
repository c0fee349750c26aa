"""Where the in-process emulators answer and the credentials they hand out for local use.

A module of plain values: importing it loads nothing else of the emulators (no Starlette), so the
resources can name these without putting the emulators on a code location's import path.
"""

from __future__ import annotations

IN_PROCESS_ROOT = "http://emulator.local"
STREAM_PREFIX = "/client/v4"
ADMIN_PREFIX = "/_emulator"
IN_PROCESS_STREAM_BASE_URL = f"{IN_PROCESS_ROOT}{STREAM_PREFIX}"
IN_PROCESS_RESEND_BASE_URL = IN_PROCESS_ROOT

EMULATOR_ACCOUNT_ID = "e" * 32
"""An account id for local use; the Stream emulator accepts any unless told to require one."""
EMULATOR_STREAM_TOKEN = "emulator-stream-token"  # noqa: S105 - not a secret: any token works
"""A token for local use; the Stream emulator accepts any unless told to require one."""
EMULATOR_API_KEY = "re_emulator_local"
"""A Resend API key for local use; the emulator accepts any ``re_`` key unless told to require one."""
EMULATOR_WEBHOOK_SECRET = "5e3d0c1b9f8a47e6a2d4c6b8e0f1a3c5d7e9f0b2c4d6e8a1b3c5d7e9f1a2b4c6"  # noqa: S105 - not a secret: fixed for local use
"""The Stream webhook secret the emulator hands out unless configured otherwise, so local
development can verify deliveries offline with a value known in advance."""
