"""Runs only when there is work: the queue schedules skip ticks that would find nothing, the work
sensors launch a run as soon as work is due, and both ask the real database (one query each)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    build_schedule_context,
    build_sensor_context,
)
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import StreamVideo
from alianza_jobs.db.types import utcnow
from alianza_jobs.defs.emails import process_email_queue
from alianza_jobs.defs.videos import (
    apply_stream_webhooks,
    process_streaming_video_queue,
    sync_stream_catalog,
)
from alianza_jobs.defs.videos.webhook_sql import DELIVERIES, store_delivery
from alianza_jobs.platform.schedules import work_sensor
from alianza_jobs.platform.tags import TAG_TRIGGER
from alianza_jobs.resources import Database
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.defs.emails.fixtures import add_emails, email
from alianza_jobs_tests.defs.videos.fixtures import insert_streamings, uid_for

TICK = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def evaluate_schedule(task: Any, job: Any, url: str, instance: DagsterInstance, **env: str) -> Any:
    schedule = task.TASK.schedule(job, load_settings(env))
    context = build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        resources={"database": Database(url=url)},
    )
    return schedule.evaluate_tick(context)


def evaluate_sensor(task: Any, url: str, instance: DagsterInstance) -> Any:
    sensor = work_sensor([(task.TASK, task.job)])
    context = build_sensor_context(instance=instance, resources={"database": Database(url=url)})
    return sensor.evaluate_tick(context)


@pytest.fixture
def instance() -> DagsterInstance:
    return DagsterInstance.get()


# -- email --------------------------------------------------------------------------------------


async def test_an_empty_email_queue_skips_the_tick_and_the_sensor(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance
) -> None:
    await add_emails(engine, [email(1, status="sent"), email(2, status="dead")])
    tick = evaluate_schedule(process_email_queue, process_email_queue.job, database_url, instance)
    assert not tick.run_requests
    assert tick.skip_message == "nothing due: 0 due emails"
    sensed = evaluate_sensor(process_email_queue, database_url, instance)
    assert not sensed.run_requests
    assert sensed.skip_message == "process_email_queue: nothing due: 0 due emails"


@pytest.mark.parametrize(
    "row",
    [
        pytest.param({}, id="never claimed"),
        pytest.param({"attempts": 1, "status": "failed"}, id="a failed one whose retry is due"),
    ],
)
async def test_due_email_launches_from_both(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance, row: dict[str, Any]
) -> None:
    await add_emails(engine, [email(1, **row), email(2, status="sent")])
    tick = evaluate_schedule(process_email_queue, process_email_queue.job, database_url, instance)
    assert tick.skip_message is None
    assert len(tick.run_requests) == 1
    sensed = evaluate_sensor(process_email_queue, database_url, instance)
    [request] = sensed.run_requests
    assert request.tags[TAG_TRIGGER] == "sensor"


# The future moment is taken when the test runs, not when pytest collects it: a full suite runs
# for longer than five minutes, by which time a collection-time "in five minutes" is in the past.
@pytest.mark.parametrize(
    "row",
    [
        pytest.param({"next_attempt_at": timedelta(minutes=5)}, id="retry not yet due"),
        pytest.param(
            {"locked_by": "another-run", "locked_until": timedelta(minutes=5)},
            id="leased by a run",
        ),
    ],
)
async def test_email_that_is_not_due_launches_nothing(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance, row: dict[str, Any]
) -> None:
    now = utcnow()
    row = {
        key: now + value if isinstance(value, timedelta) else value for key, value in row.items()
    }
    await add_emails(engine, [email(1, **row)])
    sensed = evaluate_sensor(process_email_queue, database_url, instance)
    assert not sensed.run_requests
    assert sensed.skip_message == "process_email_queue: nothing due: 0 due emails"


async def test_cron_only_mode_runs_every_tick_as_the_typescript_package_did(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance
) -> None:
    tick = evaluate_schedule(
        process_email_queue,
        process_email_queue.job,
        database_url,
        instance,
        ALIANZA_EVENT_TRIGGERS="false",
    )
    assert len(tick.run_requests) == 1


def test_a_probe_that_cannot_ask_runs_the_schedule_but_not_the_sensor(
    tmp_path: Any, instance: DagsterInstance
) -> None:
    # A database without the platform's tables: the run it launches fails with the real error.
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    tick = evaluate_schedule(process_email_queue, process_email_queue.job, url, instance)
    assert len(tick.run_requests) == 1
    sensed = evaluate_sensor(process_email_queue, url, instance)
    assert not sensed.run_requests
    assert sensed.skip_message.startswith("process_email_queue: could not ask for due work:")


async def test_the_sensor_waits_while_a_run_of_the_job_is_active(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance
) -> None:
    await add_emails(engine, [email(1)])
    run = instance.create_run_for_job(
        job_def=process_email_queue.job, status=DagsterRunStatus.STARTED
    )
    sensed = evaluate_sensor(process_email_queue, database_url, instance)
    assert not sensed.run_requests
    assert run.run_id in sensed.skip_message


# -- every queue ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "table", "nothing"),
    [
        pytest.param(process_email_queue, "email_queue", "0 due emails", id="email"),
        pytest.param(process_streaming_video_queue, "streamings", "0 queued videos", id="videos"),
        pytest.param(
            sync_stream_catalog, "stream_videos", "0 new or unsettled videos", id="catalog"
        ),
    ],
)
async def test_a_tick_with_nothing_due_records_its_table_as_current(
    engine: AsyncEngine,
    database_url: str,
    instance: DagsterInstance,
    task: Any,
    table: str,
    nothing: str,
) -> None:
    """What keeps a quiet queue's table fresh (no run, so no run's materialization)."""
    tick = evaluate_schedule(task, task.job, database_url, instance)
    assert tick.skip_message == f"nothing due: {nothing}"
    [record] = instance.fetch_materializations(AssetKey(table), limit=5).records
    assert record.run_id == ""
    assert record.asset_materialization is not None
    metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert metadata == {
        "due": 0,
        "source": "schedule tick: nothing due",
        "scheduled_time": TICK.isoformat(),
    }


# -- videos -------------------------------------------------------------------------------------


async def test_the_video_schedule_runs_only_with_queued_videos(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance
) -> None:
    task, job = process_streaming_video_queue, process_streaming_video_queue.job
    await insert_streamings(engine, [{"external_id": uid_for("done"), "status": "ready"}])
    assert evaluate_schedule(task, job, database_url, instance).skip_message == (
        "nothing due: 0 queued videos"
    )
    await insert_streamings(
        engine,
        [
            {
                "external_id": uid_for("held"),
                "locked_by": "another-run",
                "locked_until": utcnow() + timedelta(minutes=3),
            }
        ],
    )
    assert evaluate_schedule(task, job, database_url, instance).skip_message == (
        "nothing due: 0 queued videos"
    )
    await insert_streamings(engine, [{"external_id": uid_for("new")}])
    assert len(evaluate_schedule(task, job, database_url, instance).run_requests) == 1


async def test_the_catalog_sync_runs_only_when_the_mirror_has_something_to_catch_up(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance
) -> None:
    task, job = sync_stream_catalog, sync_stream_catalog.job

    def tick() -> Any:
        return evaluate_schedule(task, job, database_url, instance)

    assert tick().skip_message == "nothing due: 0 new or unsettled videos"
    uid = uid_for("uploaded")
    await insert_streamings(engine, [{"external_id": uid}])
    assert len(tick().run_requests) == 1  # an upload the mirror has not seen
    async with engine.begin() as conn:
        await conn.execute(
            insert(StreamVideo.__table__),
            [{"uid": uid, "state": "inprogress", "stream_created": utcnow()}],
        )
    assert len(tick().run_requests) == 1  # mirrored, still processing: listed until it settles
    async with engine.begin() as conn:
        await conn.execute(
            update(StreamVideo.__table__).where(StreamVideo.uid == uid).values(state="ready")
        )
    assert tick().skip_message == "nothing due: 0 new or unsettled videos"


async def test_the_webhook_sensor_launches_only_for_pending_deliveries(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance
) -> None:
    task = apply_stream_webhooks
    assert evaluate_sensor(task, database_url, instance).skip_message == (
        "apply_stream_webhooks: nothing due: 0 pending webhook deliveries"
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(DELIVERIES),
            [
                {
                    "body_sha256": "0" * 64,
                    "uid": uid_for("applied"),
                    "payload": {},
                    "received_at": utcnow(),
                    "applied_at": utcnow(),
                    "outcome": "applied",
                }
            ],
        )
    assert not evaluate_sensor(task, database_url, instance).run_requests
    body = {"uid": uid_for("new"), "status": {"state": "ready"}}
    await store_delivery(
        engine,
        body_sha256="1" * 64,
        uid=body["uid"],
        state="ready",
        payload=json.loads(json.dumps(body)),
        now=utcnow(),
    )
    [request] = evaluate_sensor(task, database_url, instance).run_requests
    assert request.tags[TAG_TRIGGER] == "sensor"


async def test_one_sensor_watches_every_queue_and_launches_each_that_has_work(
    engine: AsyncEngine, database_url: str, instance: DagsterInstance
) -> None:
    # The code location's own queues, as definitions.py gathers them (without resolving the real
    # code location's repository here: that would tie Dagster's load context to this test's
    # instance, which later tests would then find gone).
    from alianza_jobs.definitions import SENSED

    sensor = work_sensor([queue for domain in SENSED for queue in domain.sensed_queues()])
    context = build_sensor_context(
        instance=instance, resources={"database": Database(url=database_url)}
    )
    idle = sensor.evaluate_tick(context)
    assert not idle.run_requests
    assert idle.skip_message == (
        "process_email_queue: nothing due: 0 due emails; "
        "apply_stream_webhooks: nothing due: 0 pending webhook deliveries"
    )
    await add_emails(engine, [email(1)])
    [request] = sensor.evaluate_tick(context).run_requests
    assert request.job_name == "process_email_queue"
