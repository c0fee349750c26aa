"""Keep secret values out of everything we write: log lines, exception messages, metadata.

Resources receive secrets through ``dagster.EnvVar`` so the UI shows only variable names. What can
still leak is a value echoed back inside an error (an HTTP library quoting a header, a driver quoting
its DSN). Every line our logger writes and every exception a task raises passes through
:func:`redact` first; the values to mask come from :func:`alianza_jobs.settings.secret_values`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from alianza_jobs.settings import SECRET_ENV_VARS, URL_PASSWORD, secret_values

__all__ = ["MASK", "SECRET_ENV_VARS", "redact", "secret_values"]

MASK = "***"
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}")


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    values = secret_values() if secrets is None else secrets
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    return URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
