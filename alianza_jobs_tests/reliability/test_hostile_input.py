"""Hostile and bad input: each gets its clear error or its dead letter, and never crashes the batch.

* One email batch mixing everything a queue may hold: invalid and internationalised addresses,
  CR/LF (and Unicode line separators) in the subject and in address headers, a 10 MB html body,
  missing fields, next to ordinary rows. Run against the Resend emulator on Postgres.
* One video batch mixing NULL, blank, duplicate and path-like ``external_id`` values, unknown
  providers, and Stream answers with a duration of -1 or a string, an unknown state, no status,
  the legacy error spelling, an item with no uid (Stream mocked with respx: the emulator only
  produces well-formed videos).
* Platform rows in statuses the jobs do not know (the platform's table, not ours: its ORM may
  add a status, or check none): each queue run passes them by, neither failing nor writing them.
* The environment: an invalid cron override, a malformed ``DATABASE_URL`` (its password never
  printed), missing secrets, an unknown ``ALIANZA_ENV``, a run config with a typo: each a one-line
  error and exit code 2, no traceback.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import respx
from dagster import build_op_context
from sqlalchemy import Table, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import DeadLetter, EmailDelivery, VideoCheck
from alianza_jobs.db.platform_models import EmailQueue, Streaming
from alianza_jobs.definitions import build_defs
from alianza_jobs.defs.emails import process_email_queue as email_task
from alianza_jobs.defs.videos import process_streaming_video_queue as video_task
from alianza_jobs.defs.videos.process_streaming_video_queue import (
    NO_EXTERNAL_ID,
    NOT_FOUND_REASON,
    VideoQueueConfig,
    check_queued_videos,
)
from alianza_jobs.emulators import VideoSpec
from alianza_jobs.resources import CloudflareStream, Database
from alianza_jobs.settings import SettingsError, load_settings
from alianza_jobs_tests.defs.emails.fixtures import add_emails
from alianza_jobs_tests.defs.videos.fixtures import insert_streamings, uid_for
from alianza_jobs_tests.reliability.conftest import Outcomes
from alianza_jobs_tests.reliability.harness import (
    CLI,
    REPO,
    Audit,
    EmailQueueSeed,
    Namespace,
    audit_emails,
    child_env,
    dead_letter_counts,
    email_row,
    email_rows,
    metadata_of,
    run_async,
    run_config_file,
    run_in_process,
    streaming_rows,
    with_engine,
)

TEN_MB = 10 * 1024 * 1024

# -- the email batch ---------------------------------------------------------------------------------

VALID: dict[str, dict[str, Any]] = {
    "plain": {},
    "IDN domain (sent as its A-label)": {"to_address": "ana@bücher.de"},
    "Unicode display name": {"to_address": "Zoë Ñandú <zoe@example.com>"},
    "Unicode subject": {"subject": "Pedido 7 confirmado ✅ — ¡gracias!"},
    "10 MB html body": {"html": "<p>" + "x" * (TEN_MB - 7) + "</p>"},
    "sender from the row": {"from_address": "Ventas <ventas@alianza.test>"},
}
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no @": ({"to_address": "not-an-address"}, "not of the form local@domain"),
    "single-label domain": ({"to_address": "ana@localhost"}, "at least two labels"),
    "doubled dot": ({"to_address": "a..b@example.com"}, "doubled dot"),
    "hyphen-edged label": ({"to_address": "x@-bad.com"}, "letters, digits, hyphens"),
    "empty address": ({"to_address": ""}, "missing"),
    "65-octet local part": ({"to_address": "a" * 65 + "@example.com"}, "longer than 64"),
    "64-octet label": ({"to_address": "ana@" + "b" * 64 + ".com"}, "longer than 63"),
    "CR/LF in subject": ({"subject": "Hola\r\nBcc: everyone@example.com"}, "line break"),
    "LF in subject": ({"subject": "Hola\nX-Spam: yes"}, "line break"),
    "U+2028 in subject": ({"subject": "Hola\u2028Bcc: x@example.com"}, "line break"),
    "CR/LF in the From name": (
        {"from_address": "Ventas\r\nBcc: all@example.com <ventas@alianza.test>"},
        "line break",
    ),
    "LF in the To name": (
        {"to_address": "Ana\nBcc: x@example.com <ana@example.com>"},
        "line break",
    ),
    "angle brackets in the name": ({"to_address": "A<b> <ana@example.com>"}, "'<' or '>'"),
    "empty subject": ({"subject": "   "}, "subject: missing"),
    "no body": ({"html": None, "text": None}, "neither html nor text"),
    "bad sender": ({"from_address": "nobody"}, "not of the form local@domain"),
}
# Passes our rules (RFC 6531) but a strict provider refuses it: dead alone, the batch goes on.
REFUSED = {"to_address": "josé@example.com"}


def test_a_batch_of_hostile_emails(pg_url: str, emulators: Namespace, outcome: Outcomes) -> None:
    rows: list[dict[str, Any]] = []
    kinds: list[str] = []
    for i, (name, fields) in enumerate(VALID.items()):
        rows.append(email_row(i, "hostile", **fields))
        kinds.append(f"valid:{name}")
    for i, (name, (fields, _)) in enumerate(INVALID.items()):
        rows.append(email_row(100 + i, "hostile", **fields))
        kinds.append(f"invalid:{name}")
    rows.append(email_row(200, "hostile", **REFUSED))
    kinds.append("refused")

    async def insert_all(engine: Any) -> list[str]:
        return await add_emails(engine, rows)

    ids = run_async(with_engine(pg_url, insert_all))
    by_kind = dict(zip(kinds, ids, strict=True))
    valid = [by_kind[k] for k in kinds if k.startswith("valid:")]
    dead = [by_kind[k] for k in kinds if not k.startswith("valid:")]

    result = run_in_process(
        email_task.job, pg_url, emulators, "send_due_emails", {"batch_size": 50}
    )

    assert result.success
    meta = metadata_of(result, "send_due_emails")
    audit = run_async(audit_emails(pg_url, emulators.resend, EmailQueueSeed(valid, dead)))
    outcome.add_audit(
        "input",
        "hostile emails in one batch: bad/IDN addresses, CR/LF headers, 10 MB body",
        runs=1,
        audit=audit,
    )
    assert audit.ok(), audit.explain()
    assert (meta["sent"], meta["dead_invalid"], meta["dead_refused"]) == (
        len(VALID),
        len(INVALID),
        1,
    )
    table = run_async(email_rows(pg_url))
    for name, (_, reason) in INVALID.items():
        error = table[by_kind[f"invalid:{name}"]]["last_error"] or ""
        assert error.startswith("invalid: ") and reason in error, (name, error)
    assert "refused by Resend" in (table[by_kind["refused"]]["last_error"] or "")
    inbox = {e.id: e for e in emulators.resend.inbox()}

    def delivered(kind: str) -> Any:
        return inbox[str(table[by_kind[kind]]["provider_message_id"])]

    assert delivered("valid:IDN domain (sent as its A-label)").to == ["ana@xn--bcher-kva.de"]
    assert delivered("valid:Unicode display name").to == ["Zoë Ñandú <zoe@example.com>"]
    assert delivered("valid:Unicode subject").subject == VALID["Unicode subject"]["subject"]
    assert delivered("valid:10 MB html body").html == VALID["10 MB html body"]["html"]
    # No injected header reached Resend in any form.
    assert not [e for e in inbox.values() if "Bcc" in e.subject or "\n" in e.subject]
    letters = run_async(dead_letter_counts(pg_url, "email_queue"))
    assert {i: letters[i] for i in dead} == dict.fromkeys(dead, 1)


# -- the video batch ---------------------------------------------------------------------------------

STREAM_BASE = "https://api.cloudflare.test/client/v4"
ACCOUNT = "0123456789abcdef0123456789abcdef"
LIST_URL = f"{STREAM_BASE}/accounts/{ACCOUNT}/stream"


def raw_video(uid: str, state: str | None, **fields: Any) -> dict[str, Any]:
    video: dict[str, Any] = {
        "uid": uid,
        "created": (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        "modified": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "duration": -1,
        "readyToStream": state == "ready",
        "meta": {},
    }
    if state is not None:
        video["status"] = {"state": state}
    return {**video, **fields}


def test_a_batch_of_hostile_videos(pg_url: str, outcome: Outcomes) -> None:
    u = {name: uid_for(f"hostile-{name}") for name in ("m1", "str", "abc", "legacy", "new", "bad")}
    path_like = ["../../etc/passwd", "abc?x=1&y=2", "vídeo-ñ", "A" * 64]
    # (row fields, what it must end as: status, duration, reason text, checked, attempts)
    cases: list[tuple[str, dict[str, Any], tuple[str, float | None, str | None, bool, int]]] = [
        ("duration -1 (unknown)", {"external_id": u["m1"]}, ("ready", None, None, True, 0)),
        ("duration a numeric string", {"external_id": u["str"]}, ("ready", None, None, True, 0)),
        ("duration not a number", {"external_id": u["abc"]}, ("ready", None, None, True, 0)),
        (
            "legacy errReasonCode spelling",
            {"external_id": u["legacy"]},
            ("error", None, "ERR_MALFORMED_VIDEO: corrupt", True, 0),
        ),
        ("a state new to us", {"external_id": u["new"]}, ("queued", None, None, True, 0)),
        (
            "no status at all (malformed: dead letter at max_attempts)",
            {"external_id": u["bad"]},
            ("error", None, "gave up after 2 failed attempts: malformed video", True, 2),
        ),
        ("NULL external_id", {"external_id": None}, ("error", None, NO_EXTERNAL_ID, True, 0)),
        ("empty external_id", {"external_id": ""}, ("error", None, NO_EXTERNAL_ID, True, 0)),
        ("blank external_id", {"external_id": "   "}, ("error", None, NO_EXTERNAL_ID, True, 0)),
        ("duplicate external_id", {"external_id": u["m1"]}, ("ready", None, None, True, 0)),
        *(
            (
                f"path-like external_id {p[:12]!r}",
                {"external_id": p},
                ("error", None, NOT_FOUND_REASON, True, 0),
            )
            for p in path_like
        ),
        (
            "unknown provider (not this job's: untouched)",
            {"external_id": u["m1"], "provider": "vimeo"},
            ("queued", None, None, False, 0),
        ),
        (
            "soft-deleted (untouched)",
            {"external_id": u["m1"], "deleted_at": datetime.now(UTC)},
            ("queued", None, None, False, 0),
        ),
    ]
    listing = [
        raw_video(u["m1"], "ready", duration=-1),
        raw_video(u["str"], "ready", duration="12.5"),
        raw_video(u["abc"], "ready", duration="about a minute"),
        raw_video(
            u["legacy"],
            "error",
            status={
                "state": "error",
                "errReasonCode": "ERR_MALFORMED_VIDEO",
                "errReasonText": "corrupt",
            },
        ),
        raw_video(u["new"], "transcoding-v2"),
        raw_video(u["bad"], None),
        {"status": {"state": "ready"}, "created": "2026-01-01T00:00:00Z"},  # no uid
    ]

    async def insert_all(engine: Any) -> list[int]:
        return await insert_streamings(engine, [fields for _, fields, _ in cases])

    ids = run_async(with_engine(pg_url, insert_all))
    gets: list[str] = []

    def one_video(request: httpx.Request) -> httpx.Response:
        gets.append(unquote(request.url.raw_path.decode().rsplit("/stream/", 1)[1]))
        body = {"success": False, "errors": [{"code": 10003, "message": "Not Found"}]}
        return httpx.Response(404, json={**body, "messages": [], "result": None})

    resources = {
        "database": Database(url=pg_url),
        "stream": CloudflareStream(account_id=ACCOUNT, api_token="cf-test", base_url=STREAM_BASE),
    }
    config = VideoQueueConfig(max_attempts=2)
    metas = []
    with respx.mock(assert_all_called=False) as mock:
        mock.get(LIST_URL).mock(
            return_value=httpx.Response(
                200, json={"result": listing, "success": True, "errors": [], "messages": []}
            )
        )
        mock.get(url__regex=rf"^{re.escape(LIST_URL)}/.+").mock(side_effect=one_video)
        for _ in range(2):  # two ticks: the malformed item reaches max_attempts
            with build_op_context(resources=resources) as context:
                output = run_async(check_queued_videos(context, config))
            metas.append({k: v.value for k, v in output.metadata.items()})

    rows = run_async(streaming_rows(pg_url))
    letters = run_async(dead_letter_counts(pg_url, "streamings"))
    audit = Audit(items=len(cases))
    for row_id, (name, _, (status, duration, reason, checked, attempts)) in zip(
        ids, cases, strict=True
    ):
        row = rows[row_id]
        got = (row["status"], row["duration"], row["attempts"], row["checked_at"] is not None)
        if (
            got != (status, duration, attempts, checked)
            or (reason is not None and reason not in (row["error_reason"] or ""))
            or row["locked_by"] is not None
        ):
            audit.lost.append(f"{name}: {got} {row['error_reason']!r}")
    audit.duplicated += [f"row {i}: {n} dead letters" for i, n in letters.items() if n > 1]
    outcome.add_audit(
        "input",
        "hostile videos: NULL/blank/duplicate/path-like ids, duration -1 or text, unknown "
        "state and provider, no status",
        runs=2,
        audit=audit,
    )
    assert audit.ok(), audit.explain()
    assert dict(letters) == {str(ids[5]): 1}  # the malformed one, once
    assert metas[0]["malformed_listing_items"] == 1
    # Path-like ids were asked about one by one, each as one path segment, quoted.
    assert sorted(set(gets)) == sorted(path_like)


# Statuses no state of ours maps to: ones the platform may add, and near misses of ours (case,
# whitespace) that an equality on the status must not take for them.
UNKNOWN_STATUSES = {
    "streamings": ("archived", "QUEUED", "queued ", "processing"),
    "email_queue": ("bounced", "PENDING", "pending ", "scheduled"),
}


async def platform_rows(engine: AsyncEngine, table: Table) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        return {str(r.id): dict(r._mapping) for r in await conn.execute(select(table))}


async def bookkeeping_of(engine: AsyncEngine, queue: str) -> tuple[set[str], set[str]]:
    """The ids with a bookkeeping row of the queue's, and those with a dead letter."""
    key = EmailDelivery.email_id if queue == "email_queue" else VideoCheck.streaming_id
    async with engine.connect() as conn:
        kept = set((await conn.scalars(select(key))).all())
        letters = set(
            (
                await conn.scalars(select(DeadLetter.source_id).where(DeadLetter.source == queue))
            ).all()
        )
    return kept, letters


@pytest.mark.parametrize("queue", ["streamings", "email_queue"])
def test_platform_rows_in_unknown_statuses_are_left_alone(
    queue: str, pg_url: str, emulators: Namespace, outcome: Outcomes
) -> None:
    """The status column is the platform's: a value the schema map names no state for is no row
    of the queue's. The run that does the queue's work next to them succeeds, and leaves each such
    row exactly as it was, with no bookkeeping row and no dead letter: neither parked as ours,
    nor settled, sent or failed by a guess."""
    model = Streaming if queue == "streamings" else EmailQueue
    table: Table = model.__table__  # type: ignore[assignment]
    uid = uid_for(f"unknown-status-{queue}")
    emulators.stream.add_videos(
        [
            VideoSpec(
                uid=uid,
                created=datetime.now(UTC) - timedelta(minutes=5),
                final_after_s=0,
                outcome="ready",
                duration=42.0,
            )
        ]
    )

    async def seed(engine: AsyncEngine) -> tuple[str, list[str]]:
        async with engine.begin() as conn:
            # The stand-in's CHECK would refuse them; a platform whose ORM checks none would not.
            await conn.execute(text(f"ALTER TABLE {queue} DROP CONSTRAINT ck_{queue}_status"))
        # Each unknown row is one the queue would take (a ready video, a valid email) if it
        # went by anything but the status.
        if queue == "streamings":
            fields = [{"external_id": uid, "status": s} for s in UNKNOWN_STATUSES[queue]]
            ids = await insert_streamings(engine, [{"external_id": uid}, *fields])
        else:
            emails = [
                email_row(i, "unknown", status=s) for i, s in enumerate(UNKNOWN_STATUSES[queue])
            ]
            ids = await add_emails(engine, [email_row(99, "unknown"), *emails])
        ours, *unknown = (str(i) for i in ids)
        return ours, unknown

    ours, unknown = run_async(with_engine(pg_url, seed))
    before = run_async(with_engine(pg_url, lambda engine: platform_rows(engine, table)))
    if queue == "streamings":
        result = run_in_process(
            video_task.job,
            pg_url,
            emulators,
            "check_queued_videos",
            {"page_size": 5, "lookup_batch_size": 2},
        )
    else:
        result = run_in_process(
            email_task.job, pg_url, emulators, "send_due_emails", {"batch_size": 50}
        )
    after = run_async(with_engine(pg_url, lambda engine: platform_rows(engine, table)))
    kept, letters = run_async(with_engine(pg_url, lambda engine: bookkeeping_of(engine, queue)))

    touched = [
        f"{after[i]['status']!r}: {'changed' if after[i] != before[i] else ''} "
        f"{'bookkept' if i in kept else ''} {'dead-lettered' if i in letters else ''}"
        for i in unknown
        if after[i] != before[i] or i in kept or i in letters
    ]
    outcome.add(
        "input",
        "platform rows in statuses the jobs do not know (left alone, the run goes on)",
        runs=1,
        items=len(unknown),
        lost=len(touched),
    )
    assert result.success
    # The queue's own row was done, so the run did look at the table.
    assert after[ours]["status"] == ("ready" if queue == "streamings" else "sent")
    if queue == "email_queue":
        assert [e.subject for e in emulators.resend.inbox()] == ["[unknown] Order 99 confirmed"]
    assert not touched, touched


# -- the environment ----------------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55word"
# Through the command line, as an operator meets them: exit 2, one line, no traceback.
BAD_SETTINGS: dict[str, tuple[tuple[str, ...], dict[str, str], str]] = {
    "invalid cron in an environment override": (
        ("jobs",),
        {"ALIANZA_CRON_PROCESS_EMAIL_QUEUE": "61 * * * *"},
        "ALIANZA_CRON_PROCESS_EMAIL_QUEUE='61 * * * *' is not a valid cron expression",
    ),
    "DATABASE_URL with a port that is not a number": (
        ("jobs",),
        {"DATABASE_URL": f"postgresql://app:{SECRET}@db.internal:five432/app"},
        "DATABASE_URL='postgresql://app:***@db.internal:five432/app' is not a valid database URL",
    ),
    "missing secrets outside local": (
        ("jobs",),
        {"ALIANZA_ENV": "prod", "DATABASE_URL": f"postgresql://app:{SECRET}@db.internal/app"},
        "CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_STREAM_API_TOKEN, RESEND_API_KEY, EMAIL_FROM must be "
        "set when ALIANZA_ENV=prod",
    ),
    "unknown ALIANZA_ENV": (("jobs",), {"ALIANZA_ENV": "staging"}, "ALIANZA_ENV='staging'"),
}
# The same rules, checked where they live (each CLI case costs a process importing everything).
BAD_ENVIRONMENTS: dict[str, tuple[dict[str, str], str]] = {
    "cron override naming no job": (
        {"ALIANZA_CRON_PROCESS_EMAIL_QUEU": "* * * * *"},
        "ALIANZA_CRON_PROCESS_EMAIL_QUEU='* * * * *' names no job",
    ),
    "cron override of a manual-only job": (
        {"ALIANZA_CRON_REPLAY_DEAD_LETTERS": "0 * * * *"},
        "replay_dead_letters is manual-only",
    ),
    "cron override with six fields": (
        {"ALIANZA_CRON_HEALTH_CHECK": "* * * * * *"},
        "is not a valid cron expression",
    ),
    "DATABASE_URL missing its scheme's colon": (
        {"DATABASE_URL": f"postgresql//app:{SECRET}@db.internal/app"},
        "is not a valid database URL",
    ),
    "DATABASE_URL with a port out of range": (
        {"DATABASE_URL": f"postgresql://app:{SECRET}@db.internal:99999999999999999999x/app"},
        "is not a valid database URL",
    ),
    "DATABASE_URL of an unsupported backend": (
        {"DATABASE_URL": f"mysql://app:{SECRET}@db.internal/app"},
        "uses unsupported backend 'mysql'",
    ),
    "DATABASE_URL without a host": (
        {"DATABASE_URL": f"postgresql://app:{SECRET}@/app"},
        "has no host",
    ),
    "in-memory SQLite": ({"DATABASE_URL": "sqlite://"}, "must name a SQLite file"),
    "METRICS_ENABLED not a boolean": ({"METRICS_ENABLED": "sometimes"}, "is not a boolean"),
    "metrics on without a gateway": (
        {"METRICS_ENABLED": "true"},
        "PROMETHEUS_PUSHGATEWAY_URL must be set",
    ),
    "a base URL that is not http(s)": (
        {"RESEND_API_BASE_URL": "ftp://mail.example"},
        "RESEND_API_BASE_URL='ftp://mail.example' is not an http(s) URL",
    ),
    "unknown LOG_LEVEL": ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL='chatty'"),
}


def _cli_all(cases: Mapping[str, tuple[tuple[str, ...], dict[str, str], str]]) -> dict[str, Any]:
    """Every case's CLI at once (each is a process that imports the code location: seconds)."""
    procs = {
        name: subprocess.Popen(
            [*CLI, *args],
            cwd=REPO,
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, env, _) in cases.items()
    }
    return {name: (proc, *proc.communicate(timeout=120)) for name, proc in procs.items()}


def test_bad_settings_are_one_clear_line_and_exit_2(outcome: Outcomes) -> None:
    finished = _cli_all(BAD_SETTINGS)
    unclear = []
    leaked = []
    for name, (proc, stdout, stderr) in finished.items():
        expected = BAD_SETTINGS[name][2]
        lines = [line for line in stderr.splitlines() if line.strip()]
        ok = (
            proc.returncode == 2
            and len(lines) == 1
            and lines[0].startswith("Error: ")
            and expected in lines[0]
            and "Traceback" not in stderr
        )
        if not ok:
            unclear.append(f"{name}: exit {proc.returncode}: {stderr.strip()[-400:]}")
        if SECRET in stdout + stderr:
            leaked.append(name)
    outcome.add(
        "input",
        "bad settings through the CLI: invalid cron override, malformed DATABASE_URL, missing "
        "secrets, unknown env",
        runs=len(BAD_SETTINGS),
        items=len(BAD_SETTINGS),
        lost=len(unclear),
    )
    assert not leaked, f"the password was printed for {leaked}"
    assert not unclear, "\n".join(unclear)


def load_code_location_settings(environ: dict[str, str]) -> None:
    """What ``alianza_jobs.definitions`` does with the environment at load time."""
    build_defs(load_settings(environ))


@pytest.mark.parametrize("case", list(BAD_ENVIRONMENTS))
def test_bad_environments_are_refused_at_load_naming_the_variable(
    case: str, outcome: Outcomes
) -> None:
    environ, expected = BAD_ENVIRONMENTS[case]
    with pytest.raises(SettingsError) as caught:
        load_code_location_settings(environ)
    message = str(caught.value)
    outcome.add(
        "input",
        "bad settings refused at load: cron overrides, DATABASE_URL forms, metrics, URLs, levels",
        runs=0,
        items=1,
        lost=int(expected not in message),
    )
    assert expected in message
    assert SECRET not in message
    assert "\n" not in message


def test_a_run_config_with_a_typo_is_one_clear_line(tmp_path: Path, outcome: Outcomes) -> None:
    config = run_config_file(tmp_path, "send_due_emails", {"batch_sizee": 10})
    cases: dict[str, tuple[tuple[str, ...], dict[str, str], str]] = {
        "typo": (("run", "process_email_queue", "--config", str(config)), {}, "batch_sizee")
    }
    proc, _, stderr = _cli_all(cases)["typo"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    clear = proc.returncode == 2 and len(lines) == 1 and "batch_sizee" in lines[0]
    outcome.add("input", "run config with an unknown key", runs=1, items=1, lost=int(not clear))
    assert clear and "Traceback" not in stderr, stderr[-600:]
