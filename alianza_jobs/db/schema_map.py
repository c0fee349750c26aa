"""What the jobs read and write in the platform's tables: the schema map.

The platform's tables belong to the platform's own ORM. The map names, for each platform table the
jobs use, the table and its columns (by the jobs' names for them), and which status value stands
for each of the jobs' states, so no write needs a value the platform's enum lacks. The default is
the names of the local stand-in (``alianza-jobs db platform-stand-in``); a YAML file named by
``ALIANZA_SCHEMA_MAP`` overrides any part of it, and ``alianza-jobs db check`` compares a live
database with the result (docs/platform-database.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class SchemaMapError(ValueError):
    """The map file cannot be used: one line naming the file and the key at fault."""


@dataclass(frozen=True)
class TableShape:
    """What the jobs need of one platform table: its columns by our names, the ones the platform
    may lack (mapped to null: the jobs then neither read nor write them), and the states its
    status column stands for."""

    columns: tuple[str, ...]
    states: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


SHAPES: dict[str, TableShape] = {
    "streamings": TableShape(
        columns=("id", "external_id", "provider", "status", "duration", "created_at", "deleted_at"),
        states=("queued", "ready", "error"),
        optional=("deleted_at",),
    ),
    "email_queue": TableShape(
        columns=(
            "id",
            "to_address",
            "from_address",
            "subject",
            "html",
            "text",
            "status",
            "sent_at",
            "last_error",
            "created_at",
        ),
        states=("pending", "sending", "sent", "failed", "dead"),
        optional=("from_address", "html", "text", "sent_at", "last_error"),
    ),
    "users": TableShape(columns=("id", "created_at", "deleted_at"), optional=("deleted_at",)),
    "user_sessions": TableShape(columns=("id", "user_id", "expires_at")),
}
_TABLE_KEYS = ("table", "columns", "statuses")


@dataclass(frozen=True)
class TableMap:
    """One platform table: its name, our column name -> theirs (None: the platform has none), and
    our state -> the value the platform's status column holds for it."""

    key: str
    table: str
    columns: Mapping[str, str | None]
    statuses: Mapping[str, str] = field(default_factory=dict)

    def column(self, ours: str) -> str | None:
        return self.columns[ours]

    def status(self, state: str) -> str:
        return self.statuses[state]

    def states_for(self, value: str) -> list[str]:
        """Our states that the platform value ``value`` stands for (several may share one)."""
        return [state for state, theirs in self.statuses.items() if theirs == value]


@dataclass(frozen=True)
class SchemaMap:
    tables: Mapping[str, TableMap]
    source: str = "the default schema map"

    @property
    def streamings(self) -> TableMap:
        return self.tables["streamings"]

    @property
    def email_queue(self) -> TableMap:
        return self.tables["email_queue"]

    @property
    def users(self) -> TableMap:
        return self.tables["users"]

    @property
    def user_sessions(self) -> TableMap:
        return self.tables["user_sessions"]


def default_map() -> SchemaMap:
    """The stand-in's names (local, dev, the tests): identity everywhere."""
    return SchemaMap(
        {
            key: TableMap(key, key, {c: c for c in shape.columns}, {s: s for s in shape.states})
            for key, shape in SHAPES.items()
        }
    )


def load_schema_map(path: str | Path | None) -> SchemaMap:
    """The default map, overlaid with the YAML file at ``path`` (None: the default alone).

    Raises :class:`SchemaMapError` naming the file and the key when the file cannot be read, is
    not YAML, or names a table, key, column or state the jobs do not know.
    """
    if path is None:
        return default_map()
    where = f"ALIANZA_SCHEMA_MAP {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SchemaMapError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SchemaMapError(f"{where}: not valid YAML{at}: {problem}") from None
    return overlay(default_map(), document, where=where, source=str(path))


def overlay(base: SchemaMap, document: Any, *, where: str, source: str) -> SchemaMap:
    if document is None:
        return SchemaMap(base.tables, source)
    if not isinstance(document, dict):
        raise SchemaMapError(f"{where}: must be a mapping of table keys ({', '.join(SHAPES)})")
    tables = dict(base.tables)
    for key, entry in document.items():
        if key not in SHAPES:
            raise SchemaMapError(f"{where}: {key}: unknown table key (known: {', '.join(SHAPES)})")
        tables[key] = _overlay_table(tables[key], SHAPES[key], entry, f"{where}: {key}")
    _no_shared_names(tables, where)
    return SchemaMap(tables, source)


def _overlay_table(base: TableMap, shape: TableShape, entry: Any, where: str) -> TableMap:
    if entry is None:
        return base
    if not isinstance(entry, dict):
        raise SchemaMapError(f"{where}: must be a mapping with {', '.join(_TABLE_KEYS)}")
    for name in entry:
        if name not in _TABLE_KEYS:
            raise SchemaMapError(f"{where}.{name}: unknown key (known: {', '.join(_TABLE_KEYS)})")
    table = entry.get("table", base.table)
    if not isinstance(table, str) or not table.strip():
        raise SchemaMapError(f"{where}.table: must be a table name")
    columns = dict(base.columns)
    for ours, theirs in _mapping(entry.get("columns"), f"{where}.columns").items():
        if ours not in shape.columns:
            known = ", ".join(shape.columns)
            raise SchemaMapError(f"{where}.columns.{ours}: unknown column (known: {known})")
        if theirs is None and ours not in shape.optional:
            raise SchemaMapError(
                f"{where}.columns.{ours}: the jobs need this column; only "
                f"{', '.join(shape.optional) or 'none'} may be null"
            )
        if theirs is not None and (not isinstance(theirs, str) or not theirs.strip()):
            raise SchemaMapError(f"{where}.columns.{ours}: must be a column name or null")
        columns[ours] = theirs
    statuses = dict(base.statuses)
    for state, value in _mapping(entry.get("statuses"), f"{where}.statuses").items():
        if state not in shape.states:
            known = ", ".join(shape.states) or "none: this table has no status the jobs write"
            raise SchemaMapError(f"{where}.statuses.{state}: unknown state (known: {known})")
        if not isinstance(value, str) or not value.strip():
            raise SchemaMapError(f"{where}.statuses.{state}: must be a status value")
        statuses[state] = value
    return TableMap(base.key, table, columns, statuses)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SchemaMapError(f"{where}: must be a mapping of our names to the platform's")
    return value


def _no_shared_names(tables: Mapping[str, TableMap], where: str) -> None:
    seen: dict[str, str] = {}
    for key, table_map in tables.items():
        if table_map.table in seen:
            raise SchemaMapError(
                f"{where}: {key}.table: {table_map.table!r} is also {seen[table_map.table]}'s table"
            )
        seen[table_map.table] = key
        used: dict[str, str] = {}
        for ours, theirs in table_map.columns.items():
            if theirs is None:
                continue
            if theirs in used:
                raise SchemaMapError(
                    f"{where}: {key}.columns.{ours}: {theirs!r} is also mapped to {used[theirs]}"
                )
            used[theirs] = ours


__all__ = [
    "SHAPES",
    "SchemaMap",
    "SchemaMapError",
    "TableMap",
    "TableShape",
    "default_map",
    "load_schema_map",
    "overlay",
]
