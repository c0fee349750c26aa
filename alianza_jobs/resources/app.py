"""Plain application settings the tasks need at run time (sender, recipients, links), and the report
storage directory. Neither holds a secret, so both can be shown in the UI as they are."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field


class AppConfig(dg.ConfigurableResource):  # type: ignore[type-arg]
    email_from: str = Field(
        description="Default sender (EMAIL_FROM) for rows without from_address."
    )
    alert_email_to: list[str] = Field(
        default_factory=list,
        description="Who gets failure alerts and daily reports (ALERT_EMAIL_TO).",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="Slack-compatible incoming webhook for alerts (ALERT_WEBHOOK_URL, via EnvVar).",
    )
    webserver_url: str = Field(
        default="http://127.0.0.1:3000",
        description="Base URL of the Dagster UI, for links in alerts (DAGSTER_WEBSERVER_URL).",
    )

    def run_url(self, run_id: str) -> str:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}"


class ReportStorage(dg.ConfigurableResource):  # type: ignore[type-arg]
    """A directory of report files (REPORTS_DIR; default ``$DAGSTER_HOME/reports``)."""

    directory: str

    async def write_text(self, name: str, content: str) -> Path:
        """Write atomically (temp file + rename): a reader never sees half a report."""
        return await asyncio.to_thread(self._write, name, content)

    async def probe(self) -> None:
        """Write, read back and remove a file: what the health check needs to know."""
        await asyncio.to_thread(self._probe)

    def path(self, name: str) -> Path:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ValueError(f"report name {name!r} must be a plain file name")
        return Path(self.directory) / name

    def _write(self, name: str, content: str) -> Path:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def _probe(self) -> None:
        target = self._write(".health-probe", "ok")
        try:
            if target.read_text(encoding="utf-8") != "ok":
                raise OSError(f"{target} did not read back what was written")
        finally:
            target.unlink(missing_ok=True)
