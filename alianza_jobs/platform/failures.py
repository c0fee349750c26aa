"""How an API error that ends a task becomes a Dagster failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Failure

from alianza_jobs.clients.http import ApiError


def dagster_failure(
    error: ApiError, *, task: str | None = None, counts: Mapping[str, int] | None = None
) -> Failure:
    """A Dagster ``Failure`` for an error that ends a task: op retries only if they can help.

    ``task`` prefixes the description (``<task> stopped: ...``); ``counts`` (what the run had done
    when it stopped) travel in the failure's metadata as ``count_<name>``.
    """
    metadata: dict[str, Any] = {k: v for k, v in error.metadata().items() if v is not None}
    metadata |= {f"count_{k}": v for k, v in (counts or {}).items()}
    return Failure(
        description=f"{task} stopped: {error}" if task else str(error),
        metadata=metadata,
        allow_retries=error.retryable,
    )
