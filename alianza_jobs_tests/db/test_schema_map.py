"""The schema map file: an overlay on the default map, and a one-line error naming the file and
the key for every way it can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from alianza_jobs.db.schema_map import SchemaMapError, default_map, load_schema_map
from alianza_jobs_tests.db.helpers import DRIZZLE_SCHEMA_MAP


def test_no_file_is_the_default_map() -> None:
    schema_map = load_schema_map(None)
    assert schema_map == default_map()
    assert schema_map.email_queue.column("to_address") == "to_address"
    assert schema_map.streamings.status("ready") == "ready"


def test_the_drizzle_map_overlays_only_what_it_names() -> None:
    schema_map = load_schema_map(DRIZZLE_SCHEMA_MAP)
    emails = schema_map.email_queue
    assert emails.table == "email_queue"
    assert emails.column("to_address") == "to"
    assert emails.column("last_error") == "error"
    assert emails.column("subject") == "subject"
    assert emails.status("dead") == "failed"
    assert emails.status("sent") == "sent"
    assert sorted(emails.states_for("pending")) == ["failed", "pending", "sending"]
    assert schema_map.streamings == default_map().streamings
    assert schema_map.source == str(DRIZZLE_SCHEMA_MAP)


def test_an_empty_file_is_the_default_map(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("# nothing overridden\n")
    assert load_schema_map(path).tables == default_map().tables


def test_optional_columns_may_be_null(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("email_queue:\n  columns:\n    last_error: null\n    sent_at: ~\n")
    emails = load_schema_map(path).email_queue
    assert emails.column("last_error") is None
    assert emails.column("sent_at") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("email_queue: [", "not valid YAML at line 1, column 15"),
        ("- streamings\n", "must be a mapping of table keys (streamings, email_queue, users"),
        ("videos:\n  table: v\n", "videos: unknown table key (known: streamings, email_queue"),
        ("streamings:\n  tabel: v\n", "streamings.tabel: unknown key (known: table, columns"),
        ("streamings: 3\n", "streamings: must be a mapping with table, columns, statuses"),
        ("streamings:\n  table: ''\n", "streamings.table: must be a table name"),
        (
            "streamings:\n  columns:\n    length: duration\n",
            "streamings.columns.length: unknown column (known: id, external_id, provider",
        ),
        (
            "streamings:\n  columns:\n    status: null\n",
            "streamings.columns.status: the jobs need this column; only deleted_at may be null",
        ),
        ("streamings:\n  columns:\n    status: 7\n", "streamings.columns.status: must be a colu"),
        ("streamings:\n  columns: [a]\n", "streamings.columns: must be a mapping of our names"),
        (
            "streamings:\n  statuses:\n    done: ready\n",
            "streamings.statuses.done: unknown state (known: queued, ready, error)",
        ),
        (
            "users:\n  statuses:\n    active: a\n",
            "users.statuses.active: unknown state (known: none: this table has no status",
        ),
        ("email_queue:\n  statuses:\n    dead: ''\n", "email_queue.statuses.dead: must be a st"),
        (
            "users:\n  table: email_queue\n",
            "users.table: 'email_queue' is also email_queue's table",
        ),
        (
            "email_queue:\n  columns:\n    html: text\n",
            "email_queue.columns.text: 'text' is also mapped to html",
        ),
    ],
)
def test_a_bad_map_is_one_line_naming_the_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(text)
    with pytest.raises(SchemaMapError) as raised:
        load_schema_map(path)
    error = str(raised.value)
    assert "\n" not in error
    assert error.startswith(f"ALIANZA_SCHEMA_MAP {path}: ")
    assert message in error


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SchemaMapError, match=r"map\.yaml: cannot be read"):
        load_schema_map(tmp_path / "map.yaml")
