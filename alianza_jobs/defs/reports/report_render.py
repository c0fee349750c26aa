"""The report as people read it: the markdown file (which depends on the report's data only, so
a rerun writes the same bytes), its HTML twin for the email, and one queued email per recipient."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from alianza_jobs.db.models import DeadLetterSource
from alianza_jobs.defs.emails import NewEmail


def report_file_name(day: date) -> str:
    return f"daily-report-{day.isoformat()}.md"


def _rows(data: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    return [
        ("Videos", "ready", data["videos"]["ready"]),
        ("Videos", "errored", data["videos"]["errored"]),
        ("Emails", "sent", data["emails"]["sent"]),
        ("Emails", "failed, awaiting a retry", data["emails"]["failed"]),
        ("Emails", "dead (dead-lettered)", data["emails"]["dead"]),
        ("Users", "created", data["users"]["created"]),
        ("Sessions", "cleaned", data["sessions"]["cleaned"]),
        ("Stream catalog", "videos uploaded", data["catalog"]["videos_created"]),
        ("Stream catalog", "videos changed", data["catalog"]["videos_modified"]),
        ("Dead letters", "videos", data["dead_letters"][DeadLetterSource.STREAMINGS.value]),
    ]


def render_markdown(data: Mapping[str, Any]) -> str:
    """The report file: readable as plain text and as rendered markdown. Depends on ``data`` only,
    so a rerun over the same data writes the same bytes."""
    window = data["window"]
    sessions = data["sessions"]
    lines = [
        f"# Alianza daily report: {data['report_date']}",
        "",
        f"Covers {window['start']} to {window['end']} (UTC, end excluded).",
        "",
        "| Area | Figure | Count |",
        "|---|---|---:|",
        *(f"| {area} | {figure} | {count:,} |" for area, figure, count in _rows(data)),
        "",
        f"Sessions cleaned: {sessions['expired_deleted']:,} expired and "
        f"{sessions['soft_deleted_user_sessions_deleted']:,} of deleted accounts, "
        f"in {sessions['cleanup_runs']} cleanup run(s).",
        "",
        "Videos count on the day they settled (`checked_at`); emails on the day they were sent "
        "or dead-lettered; failed emails are those still awaiting a retry whose last attempt was "
        "that day.",
        "",
    ]
    return "\n".join(lines)


def render_html(data: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(area)}</td><td>{html.escape(figure)}</td>"
        f'<td style="text-align:right">{count:,}</td></tr>'
        for area, figure, count in _rows(data)
    )
    window = data["window"]
    return (
        f"<h1>Alianza daily report: {html.escape(data['report_date'])}</h1>"
        f"<p>Covers {html.escape(window['start'])} to {html.escape(window['end'])} (UTC).</p>"
        "<table><thead><tr><th>Area</th><th>Figure</th><th>Count</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def notification_rows(
    data: Mapping[str, Any], recipients: Sequence[str], run_link: str | None
) -> list[NewEmail]:
    """One email per recipient (the queue sends one address per row)."""
    subject = f"Alianza daily report for {data['report_date']}"
    text = render_markdown(data)
    if run_link:
        text += f"\nRun: {run_link}\n"
    body_html = render_html(data)
    unique = list(dict.fromkeys(r.strip() for r in recipients if r.strip()))
    return [NewEmail(to=to, subject=subject, text=text, html=body_html) for to in unique]
