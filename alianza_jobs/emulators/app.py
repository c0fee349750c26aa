"""The ASGI apps: Stream under ``/client/v4``, Resend at the root, admin under ``/_emulator``.

Building an app opens nothing (the database is opened on the first request, in a worker thread)
and registers no startup hooks: ``httpx.ASGITransport`` runs no lifespan, and a run builds one app.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from alianza_jobs.emulators.admin import AdminRoutes
from alianza_jobs.emulators.constants import ADMIN_PREFIX, STREAM_PREFIX
from alianza_jobs.emulators.resend_routes import ResendService
from alianza_jobs.emulators.state import Clock, StateStore
from alianza_jobs.emulators.stream_routes import StreamService


def _store(
    state_dir: Path | str, clock: Clock | None, overrides: Mapping[str, Any] | None
) -> StateStore:
    store = StateStore(state_dir, clock=clock)
    if overrides:
        store.set_overrides(overrides)
    return store


def _admin_mount(store: StateStore) -> Mount:
    return Mount(ADMIN_PREFIX, routes=list(AdminRoutes(store).routes()))


def _resend_routes(resend: ResendService) -> list[BaseRoute]:
    """Resend's routes, then its 404 for every other path."""
    return [
        *resend.routes(),
        Route("/{path:path}", resend.not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]


def combined_app(
    state_dir: Path | str,
    *,
    clock: Clock | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Starlette:
    """Both emulators on one app (what ``alianza-jobs emulate`` serves).

    ``CLOUDFLARE_API_BASE_URL=<root>/client/v4`` and ``RESEND_API_BASE_URL=<root>``.
    ``clock`` replaces the wall clock (tests); ``overrides`` are config values for this app only,
    laid over the stored config (the CLI's flags).
    """
    store = _store(state_dir, clock, overrides)
    stream = StreamService(store)
    resend = ResendService(store)
    return Starlette(
        routes=[
            Mount(STREAM_PREFIX, routes=list(stream.routes())),
            _admin_mount(store),
            *_resend_routes(resend),
        ]
    )


def stream_app(
    state_dir: Path | str,
    *,
    clock: Clock | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Starlette:
    """Stream alone, at the root (base URL = the app's root) plus the admin routes."""
    store = _store(state_dir, clock, overrides)
    stream = StreamService(store)
    return Starlette(routes=[_admin_mount(store), *stream.routes()])


def resend_app(
    state_dir: Path | str,
    *,
    clock: Clock | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Starlette:
    """Resend alone, at the root, plus the admin routes."""
    store = _store(state_dir, clock, overrides)
    resend = ResendService(store)
    return Starlette(routes=[_admin_mount(store), *_resend_routes(resend)])
