"""A secret set in the environment never reaches the event log, the stored run, stdout or stderr."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance
from dagster._serdes import serialize_value

from alianza_jobs.logs import TaskLogger
from alianza_jobs.redaction import redact
from alianza_jobs_tests.cli.helpers import json_lines, run_cli

SECRETS = {
    "CLOUDFLARE_STREAM_API_TOKEN": "cf-SENTINEL-token-4f9a2c",
    "RESEND_API_KEY": "re_SENTINEL_key_8d1e77",
    "DATABASE_URL": "postgresql://app:SENTINEL-db-pass-31@127.0.0.1:5999/app",
}
NEEDLES = ("SENTINEL", "4f9a2c", "8d1e77")


def test_secrets_leak_nowhere_when_a_task_logs_and_raises_them(dagster_home: Path) -> None:
    proc = run_cli("-m", "alianza_jobs_tests.platform.defs", "run", "leaky", "--json", env=SECRETS)
    assert proc.returncode == 1
    [result, _summary] = json_lines(proc.stdout)
    assert "***" in result["error"]

    instance = DagsterInstance.get()
    records = instance.all_logs(result["run_id"])
    assert records, "the run's events are in storage"
    logged = [r.user_message for r in records]
    assert any("calling the API with token ***" in m for m in logged)
    haystacks = {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "event log": "\n".join(serialize_value(r) for r in records),
    }
    # Everything the instance wrote to disk: SQLite storage, compute logs, the lot.
    for path in dagster_home.rglob("*"):
        if path.is_file():
            haystacks[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for where, text in haystacks.items():
        for needle in NEEDLES:
            assert needle not in text, f"{needle!r} leaked into {where}"


def test_logger_redacts_fields_messages_and_bearer_tokens(monkeypatch, capsys) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    log = TaskLogger({"job": "x"}).child(header="Bearer abcdefghijk123")
    log.info(f"token={SECRETS['RESEND_API_KEY']}", url=SECRETS["DATABASE_URL"])
    err = capsys.readouterr().err
    assert "SENTINEL" not in err
    assert "abcdefghijk123" not in err
    assert '"header": "Bearer ***"' in err
    assert "postgresql://app:***@127.0.0.1:5999/app" in err


def test_redact_leaves_ordinary_text_alone(monkeypatch) -> None:
    monkeypatch.setenv("RESEND_API_KEY", "re_1")  # too short to be a real key: not masked
    assert redact("sent 3 emails to re_1 list") == "sent 3 emails to re_1 list"
