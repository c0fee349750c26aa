"""What the jobs read and write in the platform's tables: the schema map.

The platform's tables belong to the platform's own ORM. The map names, for each platform table the
jobs use, the table and its columns (by the jobs' names for them), and which status value stands
for each of the jobs' states, so no write needs a value the platform's enum lacks. Today it is the
default, the names the jobs' migrations create; ``alianza-jobs db check`` compares a live database
with it (docs/platform-database.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TableShape:
    """What the jobs need of one platform table: its columns by our names, and the states its
    status column holds."""

    columns: tuple[str, ...]
    states: tuple[str, ...] = ()


SHAPES: dict[str, TableShape] = {
    "streamings": TableShape(
        columns=("id", "external_id", "provider", "status", "duration", "created_at", "deleted_at"),
        states=("queued", "ready", "error"),
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
    ),
    "users": TableShape(columns=("id", "created_at", "deleted_at")),
    "user_sessions": TableShape(columns=("id", "user_id", "expires_at")),
}


@dataclass(frozen=True)
class TableMap:
    """One platform table: its name, our column name -> theirs (None: the platform has none), and
    our state -> the value the platform's status column holds for it."""

    key: str
    table: str
    columns: Mapping[str, str | None]
    statuses: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SchemaMap:
    tables: Mapping[str, TableMap]


def default_map() -> SchemaMap:
    """The names the jobs' own migrations create (local, dev, the tests): identity everywhere."""
    return SchemaMap(
        {
            key: TableMap(
                key,
                key,
                {c: c for c in shape.columns},
                {s: s for s in shape.states},
            )
            for key, shape in SHAPES.items()
        }
    )
