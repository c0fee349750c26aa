"""Keep secret values out of everything we write: log lines, exception messages, metadata.

Resources receive secrets through ``dagster.EnvVar`` so the UI shows only variable names. What can
still leak is a value echoed back inside an error (an HTTP library quoting a header, a driver quoting
its DSN). Every line our logger writes and every exception a task raises passes through
:func:`redact` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SECRET_ENV_VARS: tuple[str, ...] = (
    "CLOUDFLARE_STREAM_API_TOKEN",
    "RESEND_API_KEY",
    "CLOUDFLARE_STREAM_WEBHOOK_SECRET",
    "ALERT_WEBHOOK_URL",
    "DAGSTER_PG_PASSWORD",
)
# Variables that hold a URL whose password is the secret part.
SECRET_URL_ENV_VARS: tuple[str, ...] = ("DATABASE_URL", "DAGSTER_PG_URL")
MASK = "***"
# Shorter values would mask ordinary words; nobody's real token is this short.
_MIN_SECRET_LEN = 6
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}")
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)@")


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    values: list[str] = []
    for name in SECRET_ENV_VARS:
        value = env.get(name, "").strip()
        if len(value) >= _MIN_SECRET_LEN:
            values.append(value)
    for name in SECRET_URL_ENV_VARS:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            password = make_url(raw).password
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            match = _URL_PASSWORD.search(raw)
            password = match["pw"] if match else None
        if password and len(str(password)) >= _MIN_SECRET_LEN:
            values.append(str(password))
    # Longest first, so a secret containing another is masked whole.
    return sorted(set(values), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    values = secret_values() if secrets is None else secrets
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)


def contains_secret(text: str, secrets: Iterable[str] | None = None) -> bool:
    return redact(text, secrets) != text
