"""``alianza-jobs emulate``: the Stream and Resend emulators on one loopback port.

Flags apply to this server only (they are laid over the stored config, not written into it), so a
later ``emulate`` without flags, or a run using the emulators in-process, is not surprised by them.
To change settings for every process, use the admin route ``PATCH /_emulator/config`` or the
Python API (``StreamEmulator(state_dir).configure(...)``). Beside the server runs the Stream
webhook's dispatcher, which POSTs each video's outcome to the registered URL (``--no-webhooks``
leaves it out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from alianza_jobs.emulators import (
    ADMIN_PREFIX,
    STREAM_PREFIX,
    StreamEmulator,
    combined_app,
)
from alianza_jobs.emulators.faults import EmulatedConnectionReset
from alianza_jobs.emulators.state import StateStore
from alianza_jobs.emulators.stream_webhooks import run_dispatcher
from alianza_jobs.settings import default_emulator_state_dir

if TYPE_CHECKING:
    import uvicorn

DEFAULT_PORT = 8787
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _QuietInjectedResets(logging.Filter):
    """uvicorn logs every exception escaping the app; an injected reset is not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, EmulatedConnectionReset)


def _given(**settings: Any) -> dict[str, Any]:
    """The settings whose option was given (not None), in order."""
    return {name: value for name, value in settings.items() if value is not None}


def _overrides(
    *,
    require_token: str | None,
    require_account: str | None,
    require_resend_key: str | None,
    latency_ms: float | None,
    error_rate: float | None,
    malformed_rate: float | None,
    reset_rate: float | None,
    seed: int | None,
    stream_rate_limit: int | None,
    stream_rate_window: float | None,
    stream_penalty: float | None,
    resend_rate_limit: int | None,
    daily_quota: int | None,
) -> dict[str, Any]:
    faults = _given(
        latency_ms=latency_ms,
        error_rate=error_rate,
        malformed_rate=malformed_rate,
        reset_rate=reset_rate,
    )
    # An empty require-string requires nothing, as when the option is left out.
    stream = _given(
        **faults,
        require_token=require_token or None,
        require_account=require_account or None,
        rate_limit_requests=stream_rate_limit,
        rate_limit_window_s=stream_rate_window,
        rate_limit_penalty_s=stream_penalty,
    )
    resend = _given(
        **faults,
        require_key=require_resend_key or None,
        rate_limit_requests=resend_rate_limit,
        daily_quota=daily_quota,
    )
    overrides: dict[str, Any] = {}
    if stream:
        overrides["stream"] = stream
    if resend:
        overrides["resend"] = resend
    if seed is not None:
        overrides["seed"] = seed
    return overrides


def _server(config: uvicorn.Config, webhook_store: StateStore | None) -> uvicorn.Server:
    """uvicorn's server, with the webhook dispatcher (when given a store) beside it in its loop.

    A subclass rather than our own ``asyncio.run``: ``Server.run`` keeps choosing the event loop
    (uvloop when installed), as it did before there was a dispatcher.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            if webhook_store is None:
                await super().serve(sockets)
                return
            stop = asyncio.Event()
            dispatcher = asyncio.create_task(run_dispatcher(webhook_store, stop=stop))
            try:
                await super().serve(sockets)
            finally:
                stop.set()
                # Not waiting for a pass in flight: its unanswered deliveries are tried again.
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher

    return Server(config)


@click.command("emulate")
@click.option(
    "--port", type=int, default=DEFAULT_PORT, show_default=True, help="0 picks a free port."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where videos, mail and settings live [default: $DAGSTER_HOME/emulators].",
)
@click.option(
    "--require-token",
    envvar="ALIANZA_EMULATOR_REQUIRE_TOKEN",
    default=None,
    help="Stream: answer 401 unless this bearer token is sent (env ALIANZA_EMULATOR_REQUIRE_TOKEN).",
)
@click.option("--require-account", default=None, help="Stream: answer 403 for other account ids.")
@click.option(
    "--require-resend-key",
    envvar="ALIANZA_EMULATOR_REQUIRE_RESEND_KEY",
    default=None,
    help="Resend: answer 403 unless this re_ key is sent (env ALIANZA_EMULATOR_REQUIRE_RESEND_KEY).",
)
@click.option("--latency-ms", type=float, default=None, help="Added to every answer (both APIs).")
@click.option("--error-rate", type=float, default=None, help="Share of requests answered 5xx.")
@click.option("--malformed-rate", type=float, default=None, help="Share answered with broken JSON.")
@click.option("--reset-rate", type=float, default=None, help="Share whose connection is dropped.")
@click.option("--seed", type=int, default=None, help="Seed of the fault RNG (reproducible runs).")
@click.option("--stream-rate-limit", type=int, default=None, help="Stream requests per window.")
@click.option("--stream-rate-window", type=float, default=None, help="Stream window, seconds.")
@click.option("--stream-penalty", type=float, default=None, help="Stream 429 penalty, seconds.")
@click.option("--resend-rate-limit", type=int, default=None, help="Resend requests per second.")
@click.option("--daily-quota", type=int, default=None, help="Resend emails per day.")
@click.option(
    "--seed-videos",
    type=int,
    default=0,
    help="Register this many generated videos first (when the state has fewer).",
)
@click.option(
    "--no-webhooks",
    is_flag=True,
    default=False,
    help="Do not POST Stream webhook deliveries (the webhook routes still answer).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="uvicorn's log level.",
)
def emulate_command(
    port: int,
    host: str,
    state_dir: Path | None,
    seed_videos: int,
    no_webhooks: bool,
    log_level: str,
    **settings: Any,
) -> None:
    """Serve the Cloudflare Stream and Resend emulators (Stream under /client/v4, Resend at /)."""
    import uvicorn

    directory = (state_dir or default_emulator_state_dir()).resolve()
    # `settings`: the fault, auth and rate-limit options, under the names `_overrides` takes.
    overrides = _overrides(**settings)
    try:
        app = combined_app(directory, overrides=overrides)
    except ValueError as exc:
        raise click.UsageError(f"invalid emulator setting: {exc}") from None
    if seed_videos > 0:
        videos = StreamEmulator(directory)
        present = videos.count()
        if seed_videos > present:
            videos.seed(seed_videos - present, seed=settings["seed"] or 0, first_index=present)

    if host not in _LOOPBACK:
        click.echo(
            f"warning: serving on {host}, not loopback: the admin routes have no auth", err=True
        )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    root = f"http://{shown_host}:{bound_port}"
    click.echo(f"Alianza emulators on {root} (state: {directory})")
    click.echo(f"  CLOUDFLARE_API_BASE_URL={root}{STREAM_PREFIX}")
    click.echo(f"  RESEND_API_BASE_URL={root}")
    click.echo(f"  admin: {root}{ADMIN_PREFIX}/health")
    click.echo("Any account id and token are accepted unless required otherwise. Ctrl-C stops.")
    webhook_store: StateStore | None = None
    if no_webhooks:
        click.echo("Stream webhook deliveries are off (--no-webhooks).")
    else:
        webhook_store = StateStore(directory)
        webhook_store.set_overrides(overrides)
        click.echo(
            "Stream webhook deliveries are on: to the notificationUrl set with "
            f"PUT {STREAM_PREFIX}/accounts/<account>/stream/webhook."
        )
    config = uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False)
    logging.getLogger("uvicorn.error").addFilter(
        _QuietInjectedResets()
    )  # after Config's dictConfig
    _server(config, webhook_store).run(sockets=[sock])
