"""``alianza-jobs webhooks``: receive Cloudflare Stream's webhooks, and register where they go.

``serve`` runs the receiver (``alianza_jobs.defs.videos.webhook_receiver``) under uvicorn: it stores
each verified delivery and answers 200; the ``queue_work_sensor`` launches the run that
settles the videos. It loads no Dagster, so it stays small. ``register --url`` points the account's
webhook at a receiver through Stream's API and says where the secret it answers with goes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from alianza_jobs.db.engine import create_engine
from alianza_jobs.emulators.constants import EMULATOR_WEBHOOK_SECRET
from alianza_jobs.redaction import redact
from alianza_jobs.settings import (
    WEBHOOK_SECRET_ENV,
    Settings,
    SettingsError,
    load_settings,
    mask_url,
    webhook_secret,
)

DEFAULT_PORT = 8790


class _UsageError(click.ClickException):
    exit_code = 2


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise _UsageError(str(exc)) from None


def receiver_secret(settings: Settings) -> str:
    """The secret deliveries are verified with: the variable, or in local with the emulated
    Stream, the emulator's (it signs with that one unless told otherwise)."""
    secret = webhook_secret()
    if secret:
        return secret
    if settings.stream_emulated:
        return EMULATOR_WEBHOOK_SECRET
    raise _UsageError(
        f"{WEBHOOK_SECRET_ENV} is not set: `alianza-jobs webhooks register --url URL` sets the "
        "account's webhook and prints the secret to store there"
    )


@click.group("webhooks")
def webhooks_group() -> None:
    """Cloudflare Stream webhooks: the receiver, and registering it with Stream."""


@webhooks_group.command("serve")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="0 picks one.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Listen address; behind a TLS-terminating proxy in production (deploy/README.md).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="uvicorn's own log level (refusals are logged as JSON lines on stderr regardless).",
)
def serve_command(port: int, host: str, log_level: str) -> None:
    """Receive Stream's webhook deliveries on POST /stream/webhook (GET /healthz for probes)."""
    import uvicorn

    from alianza_jobs.defs.videos.webhook_receiver import HEALTH_PATH, WEBHOOK_PATH, WebhookReceiver

    settings = _settings()
    secret = receiver_secret(settings)
    _check_table(settings)
    engine = create_engine(settings.database_url, jobs_schema=settings.db_schema)
    app = WebhookReceiver(engine, secret).app()

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise _UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    shown_host = f"[{host}]" if ":" in host else host
    root = f"http://{shown_host}:{sock.getsockname()[1]}"
    click.echo(f"Stream webhook receiver on {root}{WEBHOOK_PATH} (health: {root}{HEALTH_PATH})")
    click.echo(f"  storing into {mask_url(settings.database_url)}. Ctrl-C stops.")
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="off",
        access_log=False,
        # Stream's deliveries are small and arrive in bursts: keep-alive saves the handshakes,
        # a short one frees idle sockets.
        timeout_keep_alive=5,
    )
    logging.getLogger("uvicorn.error").setLevel(log_level.upper())
    uvicorn.Server(config).run(sockets=[sock])


def _check_table(settings: Settings) -> None:
    from alianza_jobs.defs.videos.webhook_sql import table_ready

    async def check() -> None:
        engine = create_engine(settings.database_url, jobs_schema=settings.db_schema)
        try:
            await table_ready(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except (SQLAlchemyError, OSError) as exc:
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        raise click.ClickException(
            f"{mask_url(settings.database_url)}: cannot store deliveries "
            f"({redact(lines[0] if lines else type(exc).__name__)}); "
            "run `alianza-jobs db upgrade` first"
        ) from None


@webhooks_group.command("register")
@click.option("--url", "url", required=True, help="The receiver's public URL, https in production.")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Write {WEBHOOK_SECRET_ENV}=... into this env file (mode 0600) instead of printing it.",
)
def register_command(url: str, env_file: Path | None) -> None:
    """Point the account's Stream webhook at URL and hand over the secret it answers with."""
    from alianza_jobs.clients.http import ApiError
    from alianza_jobs.resources import build_resources

    if not url.startswith(("https://", "http://")):
        raise _UsageError(f"--url {url!r} is not an http(s) URL")
    settings = _settings()
    if not url.startswith("https://") and not settings.is_local:
        click.echo("warning: Stream delivers to this URL unencrypted; use https", err=True)
    stream = build_resources(settings)["stream"].process_config_and_initialize()

    async def register() -> tuple[str, str]:
        async with stream.client() as api:
            registration = await api.set_webhook(url)
        return registration.notification_url, registration.secret

    try:
        registered, secret = asyncio.run(register())
    except ApiError as exc:
        raise click.ClickException(f"Stream refused the webhook: {redact(str(exc))}") from None
    where = "the emulated Stream" if settings.stream_emulated else "Cloudflare Stream"
    click.echo(f"{where} now delivers webhooks to {registered}")
    if settings.stream_emulated:
        click.echo("The receiver knows the emulator's secret; nothing to store.")
        return
    if env_file is not None:
        _write_secret(env_file, secret)
        click.echo(f"Stored {WEBHOOK_SECRET_ENV} in {env_file}; restart the receiver to use it.")
        return
    click.echo(f"Store this secret as {WEBHOOK_SECRET_ENV} for the receiver (shown once):")
    click.echo(secret)


def _write_secret(path: Path, secret: str) -> None:
    """Set the variable in an env file, keeping its other lines; readable by its owner only."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if not line.startswith(f"{WEBHOOK_SECRET_ENV}=")]
    kept.append(f"{WEBHOOK_SECRET_ENV}={secret}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(kept) + "\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
