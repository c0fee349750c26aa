"""Stale tables: one alert when a table the jobs maintain goes stale, one notice when it is fresh
again, through the run alerts' channels (:func:`~alianza_jobs.defs.alerts.sensors.deliver`).

Dagster's freshness daemon evaluates each table's policy (``platform.freshness``) every 30 s and
records a ``FreshnessStateChange`` event when its state changes; it launches no run, and neither
does this sensor, which reads those events after its cursor, oldest first. Whether a change alerts
is decided against the cursor's memory of the tables it has called stale, so a streak gets exactly
one alert and one recovery notice whatever Dagster records (and a table that was never stale gets
no "fresh again" for its first PASS). docs/alerts.md, "Stale tables", says why each choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSpec,
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange
from dagster._core.event_api import EventLogCursor

from alianza_jobs.defs.alerts.sensors import deliver
from alianza_jobs.platform.freshness import fresh_tables
from alianza_jobs.platform.tags import META_FRESHNESS, META_MAINTAINED_BY
from alianza_jobs.redaction import redact, secret_values
from alianza_jobs.resources import AppConfig, Database

SENSOR_NAME = "alert_on_stale_tables"
# As often as the freshness daemon evaluates (30 s by default): a change waits at most that long.
INTERVAL_S = 30
# Changes read per tick; more wait for the next tick. They are rare: one per table per flip.
PAGE = 200
# The run id Dagster files runless events under, the freshness daemon's among them.
RUNLESS_RUN_ID = ""
TableAlertKind = Literal["stale", "fresh"]
_FRESH_STATES = (FreshnessState.PASS, FreshnessState.WARN)
_TIME = "%Y-%m-%d %H:%M:%SZ"


@dataclass(frozen=True)
class TableAlert:
    """A table went stale, or is fresh again. Every field comes from stored events, so a delivery
    that is retried says the same thing."""

    kind: TableAlertKind
    table: str
    job: str
    url: str
    window: str
    changed_at: datetime
    """When Dagster saw the change: the table went stale (or fresh) at most one evaluation before."""
    last_update: datetime | None = None
    last_update_by: str | None = None
    stale_since: datetime | None = None
    """For a recovery notice: when the streak began."""

    @property
    def subject(self) -> str:
        if self.kind == "stale":
            return f"[alianza-jobs] {self.table} is stale (last updated {_when(self.last_update)})"
        return f"[alianza-jobs] {self.table} is fresh again"

    @property
    def text(self) -> str:
        update = _when(self.last_update)
        if self.last_update_by:
            update += f" ({self.last_update_by})"
        lines = [self.subject, "", f"Table: {self.table}", f"Maintained by: {self.job}"]
        if self.kind == "stale":
            lines += [
                f"Stale since: {_when(self.changed_at)}",
                f"Last update: {update}",
                f"Window: {self.window}",
                f"Link: {self.url}",
                f"Is {self.job}'s schedule off, or its run stuck in the queue? You get one notice "
                "when the table is fresh again.",
            ]
        else:
            lines += [
                f"Updated: {update}",
                f"It had been stale since {_when(self.stale_since)}.",
                f"Link: {self.url}",
            ]
        return "\n".join(lines)

    def labels(self) -> dict[str, str]:
        return {"kind": self.kind, "table": self.table, "job": self.job}


@dataclass
class Cursor:
    """Where the sensor is: the storage id of the last change it handled (None before its first
    tick), and the tables it has called stale (since when), which no later change has cleared."""

    after: int | None = None
    stale: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> Cursor:
        # An unreadable cursor (edited by hand, an older format) starts over like a first tick.
        try:
            data = json.loads(raw) if raw else {}
            return cls(after=data.get("after"), stale=dict(data.get("stale", {})))
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps({"after": self.after, "stale": self.stale}, sort_keys=True)


def transition(
    state: FreshnessState, table: str, stale: Mapping[str, float]
) -> TableAlertKind | None:
    """What a table's new state calls for: ``stale`` when it fails and was not stale already,
    ``fresh`` when it passes (or warns) after a stale alert, else nothing (a first PASS, a second
    FAIL of one streak, UNKNOWN for a table never updated)."""
    if state is FreshnessState.FAIL:
        return None if table in stale else "stale"
    if state in _FRESH_STATES and table in stale:
        return "fresh"
    return None


@dataclass(frozen=True)
class Checked:
    cursor: str
    sent: list[TableAlert]
    error: str | None = None

    def summary(self) -> str:
        said = ", ".join(f"{a.table} {a.kind}" for a in self.sent) or "no table changed"
        if self.error:
            return f"{said}; stopped: {self.error} (the next tick starts from that change)"
        return said


def check_tables(
    instance: DagsterInstance,
    tables: Mapping[AssetKey, AssetSpec],
    cursor: str | None,
    app: AppConfig,
    send: Callable[[TableAlert], object],
) -> Checked:
    """Handle the freshness changes of ``tables`` after ``cursor``, in order, sending what each
    calls for. The cursor moves past a change only once its alert is sent, so a failed delivery is
    tried again by the next tick and an alert already sent is not repeated; a tick that dies after
    sending but before Dagster stores its cursor may repeat that one alert (at least once)."""
    state = Cursor.parse(cursor)
    by_name = {key.to_user_string(): spec for key, spec in tables.items()}
    sent: list[TableAlert] = []

    def handle(table: str, new_state: FreshnessState, at: float) -> None:
        kind = transition(new_state, table, state.stale)
        if kind is not None:
            alert = _alert(instance, by_name[table], kind, at, state.stale.get(table), app)
            send(alert)
            sent.append(alert)
        if kind == "stale":
            state.stale[table] = at
        elif new_state is not FreshnessState.FAIL:
            # Fresh again, or no longer judged (UNKNOWN: the table's history was wiped;
            # NOT_APPLICABLE: its policy was removed): the streak is over either way.
            state.stale.pop(table, None)

    try:
        if state.after is None:
            # First tick: nobody has been told anything yet. Say what is stale now, rather than
            # replaying every streak in the history, then follow the changes from here on.
            latest = _latest_change_id(instance)
            records = instance.get_freshness_state_records(list(tables))
            for key, record in sorted(records.items(), key=lambda item: item[0].to_user_string()):
                handle(key.to_user_string(), record.freshness_state, record.updated_at.timestamp())
            state.after = latest
        else:
            for storage_id, change in _changes_after(instance, state.after):
                table = change.key.to_user_string()
                if table in by_name:
                    handle(table, change.new_state, change.state_change_timestamp)
                state.after = storage_id
    except Exception as exc:
        # Redacted: a database error may quote its URL.
        return Checked(state.dump(), sent, redact(f"{type(exc).__name__}: {exc}", secret_values()))
    return Checked(state.dump(), sent)


def _latest_change_id(instance: DagsterInstance) -> int:
    latest = instance.get_records_for_run(
        RUNLESS_RUN_ID, of_type=DagsterEventType.FRESHNESS_STATE_CHANGE, limit=1, ascending=False
    ).records
    return latest[0].storage_id if latest else -1


def _changes_after(
    instance: DagsterInstance, after: int
) -> Iterable[tuple[int, FreshnessStateChange]]:
    page = instance.get_records_for_run(
        RUNLESS_RUN_ID,
        cursor=EventLogCursor.from_storage_id(after).to_string(),
        of_type=DagsterEventType.FRESHNESS_STATE_CHANGE,
        limit=PAGE,
    )
    for record in page.records:
        event = record.event_log_entry.dagster_event
        if event is not None and isinstance(event.event_specific_data, FreshnessStateChange):
            yield record.storage_id, event.event_specific_data


def _alert(
    instance: DagsterInstance,
    spec: AssetSpec,
    kind: TableAlertKind,
    at: float,
    stale_since: float | None,
    app: AppConfig,
) -> TableAlert:
    # The update the change was judged on: the last one before it.
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=spec.key, before_timestamp=at), limit=1
    ).records
    last = records[0] if records else None
    by = None
    if last is not None:
        materialization = last.asset_materialization
        source = materialization.metadata.get("source") if materialization else None
        by = f"run {last.run_id[:8]}" if last.run_id else _text(source) or "reported without a run"
    return TableAlert(
        kind=kind,
        table=spec.key.to_user_string(),
        job=_text(spec.metadata.get(META_MAINTAINED_BY)) or "?",
        url=app.asset_url(spec.key),
        window=_text(spec.metadata.get(META_FRESHNESS)) or "its freshness policy",
        changed_at=_utc(at),
        last_update=_utc(last.timestamp) if last is not None else None,
        last_update_by=by,
        stale_since=_utc(stale_since) if stale_since is not None else None,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.value) if isinstance(value, MetadataValue) else str(value)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _when(moment: datetime | None) -> str:
    return moment.strftime(_TIME) if moment is not None else "never"


@sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "One alert when a table the jobs maintain goes stale (its freshness policy fails: no run "
        "or nothing-due tick has updated it within its window), one notice when it is fresh "
        "again (ALERT_EMAIL_TO via the email queue, ALERT_WEBHOOK_URL). Launches no runs."
    ),
)
def alert_on_stale_tables(
    context: SensorEvaluationContext, database: Database, app: AppConfig
) -> SkipReason:
    repository = context.repository_def
    tables = fresh_tables(repository.assets_defs_by_key.values()) if repository else {}
    checked = check_tables(
        context.instance, tables, context.cursor, app, lambda alert: deliver(alert, database, app)
    )
    if checked.error:
        context.log.error(f"Stale-table alerts stopped: {checked.error}")
    context.update_cursor(checked.cursor)
    return SkipReason(checked.summary())
