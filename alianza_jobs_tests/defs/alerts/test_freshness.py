"""Stale tables: one alert per stale streak, one "fresh again" notice, decided from the freshness
daemon's events against the sensor's cursor, on a real Dagster instance."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import respx
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    DagsterInstance,
    Definitions,
    build_sensor_context,
)
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange
from sqlalchemy import select

from alianza_jobs.db.platform_models import EmailQueue
from alianza_jobs.defs.alerts.freshness import (
    Cursor,
    TableAlert,
    alert_on_stale_tables,
    check_tables,
)
from alianza_jobs.defs.emails import process_email_queue
from alianza_jobs.defs.emails.assets import EMAIL_QUEUE
from alianza_jobs.defs.videos import sync_stream_catalog
from alianza_jobs.defs.videos.assets import STREAM_VIDEOS
from alianza_jobs.platform.freshness import fresh_tables, with_freshness
from alianza_jobs.resources import AppConfig, Database
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.db.helpers import migrated_engine

PASS, WARN, FAIL = FreshnessState.PASS, FreshnessState.WARN, FreshnessState.FAIL
UNKNOWN, NOT_APPLICABLE = FreshnessState.UNKNOWN, FreshnessState.NOT_APPLICABLE
WEBHOOK = "https://hooks.example.test/services/T000/B000/XXXX"
APP = AppConfig(email_from="jobs@alianza.test", webserver_url="http://dagster.internal:3000")
SETTINGS = load_settings({"ALIANZA_FRESHNESS_STREAM_VIDEOS_SECONDS": "120"})
VIDEOS = with_freshness(STREAM_VIDEOS, sync_stream_catalog.TASK, SETTINGS)
EMAILS = with_freshness(EMAIL_QUEUE, process_email_queue.TASK, SETTINGS)
TABLES = fresh_tables([VIDEOS, EMAILS])


class Tables:
    """The freshness daemon's side, as it writes it: updates of the tables and state changes."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance
        self.state: dict[str, FreshnessState] = {}

    def update(self, table: str, source: str = "schedule tick: nothing due") -> None:
        self.instance.report_runless_asset_event(
            AssetMaterialization(table, metadata={"source": source})
        )

    def becomes(self, table: str, new: FreshnessState) -> None:
        previous = self.state.get(table, UNKNOWN)
        self.instance.report_runless_asset_event(
            FreshnessStateChange(
                key=AssetKey(table),
                new_state=new,
                previous_state=previous,
                state_change_timestamp=time.time(),
            )
        )
        self.state[table] = new


class Sensor:
    """The sensor's ticks, each from the cursor the previous one left (what the daemon stores)."""

    def __init__(self, instance: DagsterInstance, cursor: str | None = None) -> None:
        self.instance = instance
        self.cursor = cursor
        self.sent: list[TableAlert] = []

    def tick(self, fail_on: set[str] | None = None) -> list[tuple[str, str]]:
        sent: list[TableAlert] = []

        def send(alert: TableAlert) -> None:
            if fail_on and alert.table in fail_on:
                raise ConnectionError("email queue unavailable")
            sent.append(alert)

        checked = check_tables(self.instance, TABLES, self.cursor, APP, send)
        self.cursor = checked.cursor
        self.sent += sent
        return [(a.table, a.kind) for a in sent]


@pytest.fixture
def instance() -> DagsterInstance:
    return DagsterInstance.get()


@pytest.fixture
def tables(instance: DagsterInstance) -> Tables:
    return Tables(instance)


@pytest.fixture
def sensor(instance: DagsterInstance) -> Sensor:
    """A sensor that has had its first tick before anything happened."""
    started = Sensor(instance)
    assert started.tick() == []
    return started


def test_one_alert_per_stale_streak_and_one_notice_when_fresh_again(
    tables: Tables, sensor: Sensor
) -> None:
    tables.update("stream_videos")
    tables.becomes("stream_videos", PASS)  # the first state of a new deployment: no notice
    assert sensor.tick() == []

    tables.becomes("stream_videos", FAIL)
    assert sensor.tick() == [("stream_videos", "stale")]
    assert sensor.tick() == []  # the next evaluations, the next ticks: nothing more
    tables.becomes("stream_videos", FAIL)  # even if Dagster said it again
    assert sensor.tick() == []

    tables.update("stream_videos", source="run")
    tables.becomes("stream_videos", PASS)
    assert sensor.tick() == [("stream_videos", "fresh")]
    assert sensor.tick() == []

    tables.becomes("stream_videos", FAIL)  # a new streak: a new alert
    assert sensor.tick() == [("stream_videos", "stale")]


def test_the_alert_says_which_table_since_when_and_where_to_look(
    tables: Tables, sensor: Sensor
) -> None:
    tables.update("stream_videos")
    tables.becomes("stream_videos", PASS)
    tables.becomes("stream_videos", FAIL)
    sensor.tick()
    tables.update("stream_videos")
    tables.becomes("stream_videos", WARN)  # WARN is within the window: fresh enough
    sensor.tick()

    stale, fresh = sensor.sent
    assert stale.subject.startswith("[alianza-jobs] stream_videos is stale (last updated 20")
    lines = stale.text.splitlines()
    assert "Table: stream_videos" in lines
    assert "Maintained by: sync_stream_catalog" in lines
    assert "Link: http://dagster.internal:3000/assets/stream_videos" in lines
    assert any(
        line.startswith("Last update: ") and line.endswith("(schedule tick: nothing due)")
        for line in lines
    ), lines
    assert (
        "Window: stale 2 min after its last update (ALIANZA_FRESHNESS_STREAM_VIDEOS_SECONDS=120)"
        in lines
    )
    assert stale.labels() == {
        "kind": "stale",
        "table": "stream_videos",
        "job": "sync_stream_catalog",
    }
    assert stale.last_update is not None and stale.last_update <= stale.changed_at

    assert fresh.subject == "[alianza-jobs] stream_videos is fresh again"
    assert fresh.stale_since == stale.changed_at
    assert f"It had been stale since {stale.changed_at:%Y-%m-%d %H:%M:%SZ}." in fresh.text


def test_a_tick_whose_delivery_fails_resumes_there_without_repeating_what_it_sent(
    tables: Tables, sensor: Sensor
) -> None:
    for table in ("stream_videos", "email_queue"):
        tables.update(table)
        tables.becomes(table, PASS)
        tables.becomes(table, FAIL)
    # The first alert goes out, the second cannot: the tick stops there.
    assert sensor.tick(fail_on={"email_queue"}) == [("stream_videos", "stale")]
    assert sensor.tick() == [("email_queue", "stale")]
    assert sensor.tick() == []


def test_a_table_never_updated_and_other_assets_raise_nothing(
    tables: Tables, sensor: Sensor
) -> None:
    tables.becomes("stream_videos", UNKNOWN)  # no update yet: nothing to be late against
    tables.becomes("user_sessions", NOT_APPLICABLE)  # no policy
    tables.becomes("someone_elses_asset", FAIL)  # not one of ours
    assert sensor.tick() == []


def test_a_streak_that_ends_without_an_update_ends_silently(tables: Tables, sensor: Sensor) -> None:
    tables.update("stream_videos")
    tables.becomes("stream_videos", FAIL)
    assert sensor.tick() == [("stream_videos", "stale")]
    tables.becomes("stream_videos", UNKNOWN)  # its history wiped
    tables.update("stream_videos")
    tables.becomes("stream_videos", PASS)
    assert sensor.tick() == []


def test_the_first_tick_says_what_is_stale_now_rather_than_replaying_history(
    instance: DagsterInstance, tables: Tables
) -> None:
    # Before the sensor's first tick: an old streak of email_queue, over; stream_videos stale now.
    tables.update("email_queue")
    tables.becomes("email_queue", FAIL)
    tables.update("email_queue")
    tables.becomes("email_queue", PASS)
    tables.update("stream_videos")
    tables.becomes("stream_videos", FAIL)

    first = Sensor(instance)
    assert first.tick() == [("stream_videos", "stale")]
    assert first.tick() == []
    tables.update("stream_videos")
    tables.becomes("stream_videos", PASS)
    assert first.tick() == [("stream_videos", "fresh")]


def test_an_unreadable_cursor_starts_over_like_a_first_tick(
    instance: DagsterInstance, tables: Tables
) -> None:
    tables.update("stream_videos")
    tables.becomes("stream_videos", FAIL)
    assert Cursor.parse("not json") == Cursor()
    assert Sensor(instance, cursor="not json").tick() == [("stream_videos", "stale")]


# -- the sensor itself, through the run alerts' channels ----------------------------------------


def _emails(db_url: str) -> list[Any]:
    async def fetch() -> list[Any]:
        async with migrated_engine(db_url) as engine, engine.connect() as conn:
            return list((await conn.execute(select(EmailQueue).order_by(EmailQueue.id))).all())

    return asyncio.run(fetch())


def test_the_sensor_sends_through_the_email_queue_and_the_webhook(
    instance: DagsterInstance, tables: Tables, db_url: str
) -> None:
    app = AppConfig(
        email_from="jobs@alianza.test",
        alert_email_to=["oncall@alianza.test"],
        alert_webhook_url=WEBHOOK,
        webserver_url="http://dagster.internal:3000",
    )
    resources = {"database": Database(url=db_url), "app": app}
    # user_sessions has no policy: not watched, whatever its events say.
    defs = Definitions(
        assets=[VIDEOS, EMAILS, AssetSpec("user_sessions")],
        sensors=[alert_on_stale_tables],
        resources=resources,
    )
    repository = defs.get_repository_def()

    def tick(cursor: str | None) -> tuple[str | None, str | None]:
        context = build_sensor_context(
            instance=instance, cursor=cursor, repository_def=repository, resources=resources
        )
        result = alert_on_stale_tables.evaluate_tick(context)
        assert not result.run_requests  # it never launches a run
        return result.cursor, result.skip_message

    with respx.mock() as mock:
        hook = mock.post(WEBHOOK).mock(return_value=httpx.Response(200, text="ok"))
        cursor, said = tick(None)
        assert said == "no table changed"
        tables.update("stream_videos")
        tables.becomes("stream_videos", FAIL)
        tables.becomes("user_sessions", FAIL)
        cursor, said = tick(cursor)
        assert said == "stream_videos stale"
        cursor, said = tick(cursor)
        assert said == "no table changed"

    [email] = _emails(db_url)
    assert email.to_address == "oncall@alianza.test"
    assert email.subject.startswith("[alianza-jobs] stream_videos is stale")
    assert "Maintained by: sync_stream_catalog" in email.text
    assert hook.call_count == 1
    payload = json.loads(hook.calls.last.request.content)
    assert payload["alianza"] == {
        "kind": "stale",
        "table": "stream_videos",
        "job": "sync_stream_catalog",
    }
    assert payload["text"] == email.text
