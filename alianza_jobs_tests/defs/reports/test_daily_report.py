"""daily_report: one UTC day's figures into daily_reports, a markdown file and one queued email.

On SQLite and on the real Postgres: figures and their edges (midnights, ``checked_at`` over
``updated_at``), sessions cleaned read from real cleanup runs' materializations, the three-day
backfill, reruns that change nothing but ``updated_at``, and concurrent runs of one day.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetKey, DagsterInstance
from dagster._core.test_utils import freeze_time
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from alianza_jobs.db.models import DailyReport, DeadLetter, EmailDelivery, StreamVideo, VideoCheck
from alianza_jobs.db.platform_models import EmailQueue, Streaming, User, UserSession
from alianza_jobs.db.platform_tables import platform_tables
from alianza_jobs.db.schema_map import default_map
from alianza_jobs.defs.emails.assets import EMAIL_QUEUE
from alianza_jobs.defs.reports import daily_report as task
from alianza_jobs.defs.reports import report_figures as figures
from alianza_jobs.defs.reports import report_render as render
from alianza_jobs.defs.reports.daily_report import build_daily_report
from alianza_jobs.defs.reports.report_store import store_report
from alianza_jobs.defs.sessions import cleanup_expired_sessions as cleanup
from alianza_jobs.defs.sessions.assets import USER_SESSIONS
from alianza_jobs.defs.videos.assets import STREAM_VIDEOS, STREAMINGS
from alianza_jobs.platform.tags import MAX_RUNTIME_TAG, TAG_CRON, TAG_JOB
from alianza_jobs.resources import AppConfig, Database, ReportStorage
from alianza_jobs.settings import load_settings
from alianza_jobs_tests.db.helpers import migrated_engine

RECIPIENTS = ("ops@alianza.example", "cto@alianza.example")
DAY = date(2026, 11, 20)
HOUR = timedelta(hours=1)
_serial = itertools.count(1)
Row = dict[str, Any]


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def run_async(coro: Any) -> Any:
    """execute_in_process runs the async asset on an event loop of its own, so the job tests are
    plain functions doing their database set-up and checks through asyncio.run."""
    return asyncio.run(coro)


def resources(url: str, tmp_path: Path, recipients: Sequence[str] = RECIPIENTS) -> dict[str, Any]:
    return {
        "database": Database(url=url),
        "app": AppConfig(
            email_from="reports@alianza.example",
            alert_email_to=list(recipients),
            webserver_url="http://dagster.example",
        ),
        "reports": ReportStorage(directory=str(tmp_path / "reports")),
    }


def definitions(url: str, tmp_path: Path, **kwargs: Any) -> dg.Definitions:
    return dg.Definitions(
        assets=[STREAMINGS, EMAIL_QUEUE, USER_SESSIONS, STREAM_VIDEOS, *task.assets],
        jobs=[task.job],
        resources=resources(url, tmp_path, **kwargs),
    )


# -- test data -------------------------------------------------------------------------------------


def _streaming(status: str, checked_at: datetime | None, updated_at: datetime, **extra: Any) -> Row:
    return {
        "external_id": f"uid{next(_serial):029d}",
        "status": status,
        "checked_at": checked_at,
        "updated_at": updated_at,
        "created_at": updated_at - 2 * HOUR,
        "deleted_at": extra.get("deleted_at"),
        "error_reason": "ERR_NON_VIDEO: not a video" if status == "error" else None,
    }


def _email(status: str, updated_at: datetime, sent_at: datetime | None = None) -> Row:
    return {
        "to_address": f"user{next(_serial)}@example.com",
        "subject": "Hola",
        "text": "Hola",
        "status": status,
        "sent_at": sent_at,
        "updated_at": updated_at,
        "provider_message_id": f"msg-{next(_serial)}" if sent_at else None,
    }


def _dead_letter(source: str, failed_at: datetime) -> Row:
    return {
        "source": source,
        "source_id": str(next(_serial)),
        "payload": {"reason": "test"},
        "error": "permanent failure",
        "failed_at": failed_at,
    }


def _user(created_at: datetime) -> Row:
    n = next(_serial)
    return {"email": f"person{n}@example.com", "name": f"Person {n}", "created_at": created_at}


def _catalog_video(created: datetime, modified: datetime) -> Row:
    return {
        "uid": f"cat{next(_serial):029d}",
        "state": "ready",
        "stream_created": created,
        "stream_modified": modified,
    }


@dataclass
class DayRows:
    streamings: list[Row]
    emails: list[Row]
    dead_letters: list[Row]
    users: list[Row]
    videos: list[Row]

    async def write(self, engine: AsyncEngine) -> None:
        """Platform rows, with the jobs' bookkeeping where the queues would have left it: a
        video's check (its time and error reason), an email's delivery (state, sent time, id)."""
        async with engine.begin() as conn:
            for model, rows in (
                (DeadLetter, self.dead_letters),
                (User, self.users),
                (StreamVideo, self.videos),
            ):
                if rows:
                    await conn.execute(insert(model), rows)
            for row in self.streamings:
                check = {k: row.pop(k) for k in ("checked_at", "error_reason")}
                video_id = await conn.scalar(insert(Streaming).values(row).returning(Streaming.id))
                if check["checked_at"] is not None:
                    await conn.execute(
                        insert(VideoCheck).values(streaming_id=str(video_id), **check)
                    )
            for row in self.emails:
                message_id = row.pop("provider_message_id")
                email_id = await conn.scalar(
                    insert(EmailQueue).values(row).returning(EmailQueue.id)
                )
                delivery = {k: row[k] for k in ("status", "sent_at", "updated_at")}
                await conn.execute(
                    insert(EmailDelivery).values(
                        email_id=str(email_id), provider_message_id=message_id, **delivery
                    )
                )


def figures_for(day: date, k: int) -> tuple[DayRows, dict[str, int]]:
    """Rows well inside ``day`` (01:00-22:00), ``k`` scaling them so each day differs."""
    t = midnight(day) + HOUR
    day_rows = DayRows(
        streamings=[_streaming("ready", t + i * HOUR, t + i * HOUR) for i in range(k + 2)]
        + [_streaming("error", t + i * HOUR, t + i * HOUR) for i in range(k)]
        + [_streaming("queued", t, t)],  # checked that day but not settled: not counted
        emails=[_email("sent", t + i * HOUR, sent_at=t + i * HOUR) for i in range(k + 3)]
        + [_email("failed", t + 2 * HOUR)]
        + [_email("pending", t)],
        dead_letters=[_dead_letter("email_queue", t + HOUR) for _ in range(k)]
        + [_dead_letter("streamings", t + 2 * HOUR)],
        users=[_user(t + i * HOUR) for i in range(k + 1)],
        videos=[_catalog_video(t, t + HOUR), _catalog_video(t - 30 * 24 * HOUR, t + 3 * HOUR)],
    )
    expected = {
        "videos_ready": k + 2,
        "videos_errored": k,
        "emails_sent": k + 3,
        "emails_failed": 1,
        "emails_dead": k,
        "users_created": k + 1,
    }
    return day_rows, expected


def edges_of(day: date) -> tuple[DayRows, dict[str, int]]:
    """Rows on and around the day's boundaries, and how much each figure of ``day`` they add."""
    start, end = midnight(day), midnight(day + timedelta(days=1))
    day_rows = DayRows(
        streamings=[
            _streaming("ready", start, start),  # settled at 00:00:00: counted
            _streaming("ready", end, end),  # settled at the next midnight: the next day's
            # Never checked by the queue (settled by someone else): not the queue's to report.
            _streaming("ready", None, start + 5 * HOUR),
            # Settled the day before, edited today: checked_at wins, not counted.
            _streaming("ready", start - HOUR, start + 3 * HOUR),
            # Settled today, soft-deleted tomorrow: still counted.
            _streaming("error", start + 4 * HOUR, end + HOUR, deleted_at=end + HOUR),
        ],
        emails=[
            _email("sent", start, sent_at=start),  # counted
            _email("sent", end, sent_at=end),  # tomorrow's
            _email("failed", end + HOUR),  # last failed tomorrow: tomorrow's
            _email("dead", start + HOUR),  # counted through its dead letter, not its status
        ],
        dead_letters=[
            _dead_letter("email_queue", start + HOUR),
            _dead_letter("email_queue", start - timedelta(microseconds=1)),  # yesterday's
        ],
        users=[_user(start), _user(end)],
        videos=[],
    )
    extra = {
        "videos_ready": 1,
        "videos_errored": 1,
        "emails_sent": 1,
        "emails_failed": 0,
        "emails_dead": 1,
        "users_created": 1,
    }
    return day_rows, extra


async def _insert(url: str, *all_day_rows: DayRows) -> None:
    async with migrated_engine(url) as engine:
        for day_rows in all_day_rows:
            await day_rows.write(engine)


async def _add_sessions(url: str, *, expired: int, of_deleted_user: int) -> None:
    """Sessions the next cleanup run will delete: expired ones, and live ones of a deleted user."""
    now = datetime.now(UTC)
    async with migrated_engine(url) as engine, engine.begin() as conn:
        # Both users are created now, outside every reported day.
        alive, gone = (
            await conn.execute(
                insert(User).returning(User.id, sort_by_parameter_order=True),
                [
                    {"email": f"s{next(_serial)}@example.com", "name": "A", "deleted_at": None},
                    {"email": f"s{next(_serial)}@example.com", "name": "B", "deleted_at": now},
                ],
            )
        ).scalars()
        rows = [
            {"user_id": alive, "token_hash": f"{next(_serial):064x}", "expires_at": now - HOUR}
            for _ in range(expired)
        ] + [
            {"user_id": gone, "token_hash": f"{next(_serial):064x}", "expires_at": now + HOUR}
            for _ in range(of_deleted_user)
        ]
        await conn.execute(insert(UserSession), rows)


def cleanup_at(
    instance: DagsterInstance, url: str, when: datetime, *, dry_run: bool = False
) -> dict[str, int]:
    """A real cleanup_expired_sessions run whose materialization is recorded at ``when``."""
    with freeze_time(when):
        result = cleanup.job.execute_in_process(
            resources={"database": Database(url=url)},
            run_config={"ops": {"delete_expired_sessions": {"config": {"dry_run": dry_run}}}},
            instance=instance,
        )
    assert result.success
    [materialization] = result.asset_materializations_for_node("delete_expired_sessions")
    return {k: v.value for k, v in materialization.metadata.items() if isinstance(v.value, int)}


# -- reading back -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    id: int
    report_date: date
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime


async def _reports(url: str) -> dict[date, ReportRow]:
    async with migrated_engine(url) as engine, engine.connect() as conn:
        rows = (await conn.execute(select(DailyReport))).all()
    return {
        r.report_date: ReportRow(r.id, r.report_date, r.data, r.created_at, r.updated_at)
        for r in rows
    }


async def _notification_emails(url: str) -> list[tuple[int, str, str, str]]:
    async with migrated_engine(url) as engine, engine.connect() as conn:
        rows = (
            await conn.execute(
                select(EmailQueue.id, EmailQueue.to_address, EmailQueue.subject, EmailQueue.status)
                .where(EmailQueue.subject.like("Alianza daily report%"))
                .order_by(EmailQueue.id)
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def _figures(data: dict[str, Any]) -> dict[str, int]:
    return figures.headline(data)


# -- direct invocation ------------------------------------------------------------------------------


def test_direct_invocation_counts_the_day_and_its_edges(database_url: str, tmp_path: Path) -> None:
    day_rows, expected = figures_for(DAY, 2)
    edges, extra = edges_of(DAY)
    other_days = [
        figures_for(DAY - timedelta(days=1), 5)[0],
        figures_for(DAY + timedelta(days=1), 7)[0],
    ]
    run_async(_insert(database_url, day_rows, edges, *other_days))
    expected = {key: expected[key] + extra[key] for key in expected}

    instance = DagsterInstance.get()
    start = midnight(DAY)
    # Sessions: a dry run that day (deletes nothing: not counted), the real run that day, and
    # one the next day (the next report's).
    run_async(_add_sessions(database_url, expired=3, of_deleted_user=2))
    dry = cleanup_at(instance, database_url, start + HOUR, dry_run=True)
    assert dry["expired_deleted"] == 3
    real = cleanup_at(instance, database_url, start + 2 * HOUR)
    assert (real["expired_deleted"], real["soft_deleted_user_sessions_deleted"]) == (3, 2)
    run_async(_add_sessions(database_url, expired=4, of_deleted_user=0))
    cleanup_at(instance, database_url, start + 26 * HOUR)

    with dg.build_asset_context(
        partition_key=DAY.isoformat(),
        resources=resources(database_url, tmp_path),
        instance=instance,
    ) as context:
        result = run_async(build_daily_report(context))

    meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
    assert {k: meta[k] for k in expected} == expected
    assert meta["sessions_cleaned"] == 5
    assert meta["sessions_cleanup_runs"] == 1
    assert meta["notification_emails_enqueued"] == len(RECIPIENTS)
    assert meta["dead_letters_streamings"] == 1
    assert (meta["catalog_videos_created"], meta["catalog_videos_modified"]) == (1, 2)
    path = tmp_path / "reports" / "daily-report-2026-11-20.md"
    assert result.metadata["path"].path == str(path)

    [row] = run_async(_reports(database_url)).values()
    assert row.report_date == DAY
    assert _figures(row.data) == {**expected, "sessions_cleaned": 5}
    assert row.data["sessions"] == {
        "cleaned": 5,
        "expired_deleted": 3,
        "soft_deleted_user_sessions_deleted": 2,
        "cleanup_runs": 1,
    }
    assert row.data["window"] == {
        "start": "2026-11-20T00:00:00Z",
        "end": "2026-11-21T00:00:00Z",
        "timezone": "UTC",
    }
    assert row.data["dead_letters"] == {"email_queue": expected["emails_dead"], "streamings": 1}

    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Alianza daily report: 2026-11-20\n")
    assert f"| Videos | ready | {expected['videos_ready']} |" in text
    assert f"| Emails | sent | {expected['emails_sent']} |" in text
    assert "| Sessions | cleaned | 5 |" in text
    assert text == result.metadata["report"].md_str

    emails = run_async(_notification_emails(database_url))
    assert [(to, subject, status) for _, to, subject, status in emails] == [
        (to, "Alianza daily report for 2026-11-20", "pending") for to in RECIPIENTS
    ]
    assert row.data["notification"]["email_queue_ids"] == [str(i) for i, *_ in emails]
    assert row.data["notification"]["to"] == list(RECIPIENTS)


# -- the job: a three-day backfill and a rerun -------------------------------------------------------


def test_backfill_of_three_days_then_a_rerun_changes_only_updated_at(
    database_url: str, tmp_path: Path
) -> None:
    days = [date(2026, 11, 24) + timedelta(days=i) for i in range(3)]
    expected: dict[date, dict[str, int]] = {}
    all_day_rows = []
    for k, day in enumerate(days, start=1):
        day_rows, expected[day] = figures_for(day, k)
        all_day_rows.append(day_rows)
    run_async(_insert(database_url, *all_day_rows))
    defs = definitions(database_url, tmp_path)
    job_def = defs.resolve_job_def("daily_report")
    instance = DagsterInstance.get()

    # What a backfill of 2026-11-24..26 launches: one run per partition of the job.
    partitions = job_def.partitions_def
    assert partitions is not None
    keys = partitions.get_partition_keys_in_range(dg.PartitionKeyRange("2026-11-24", "2026-11-26"))
    assert keys == [d.isoformat() for d in days]
    for key in keys:
        result = job_def.execute_in_process(partition_key=key, instance=instance)
        assert result.success
        assert result.dagster_run.tags[TAG_JOB] == "daily_report"
        [materialization] = result.asset_materializations_for_node("daily_reports")
        assert materialization.partition == key
        assert (
            materialization.metadata["emails_sent"].value
            == expected[date.fromisoformat(key)]["emails_sent"]
        )

    assert instance.get_materialized_partitions(AssetKey("daily_reports")) == set(keys)
    rows = run_async(_reports(database_url))
    assert sorted(rows) == days
    for day in days:
        assert _figures(rows[day].data) == {**expected[day], "sessions_cleaned": 0}
    files = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert files == [f"daily-report-{d.isoformat()}.md" for d in days]
    emails = run_async(_notification_emails(database_url))
    assert [(to, subject) for _, to, subject, _ in emails] == [
        (to, f"Alianza daily report for {d.isoformat()}") for d in days for to in RECIPIENTS
    ]
    contents = {p.name: p.read_bytes() for p in (tmp_path / "reports").iterdir()}

    # Rerun the middle day: same data, same id and created_at, a later updated_at, no new email.
    rerun = job_def.execute_in_process(partition_key=keys[1], instance=instance)
    assert rerun.success
    [materialization] = rerun.asset_materializations_for_node("daily_reports")
    assert materialization.metadata["notification"].value == "already enqueued by an earlier run"
    assert materialization.metadata["notification_emails_enqueued"].value == 0
    after = run_async(_reports(database_url))
    for day in days:
        before_row, after_row = rows[day], after[day]
        assert after_row.data == before_row.data
        assert (after_row.id, after_row.created_at) == (before_row.id, before_row.created_at)
        if day == days[1]:
            assert after_row.updated_at > before_row.updated_at
        else:
            assert after_row.updated_at == before_row.updated_at
    assert run_async(_notification_emails(database_url)) == emails
    assert {p.name: p.read_bytes() for p in (tmp_path / "reports").iterdir()} == contents


def test_no_recipients_skips_the_email_and_a_later_run_with_recipients_sends_it_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    run_async(_insert(url))
    instance = DagsterInstance.get()
    quiet = definitions(url, tmp_path, recipients=[]).resolve_job_def("daily_report")
    result = quiet.execute_in_process(partition_key=DAY.isoformat(), instance=instance)
    [materialization] = result.asset_materializations_for_node("daily_reports")
    assert materialization.metadata["notification"].value == "skipped: ALERT_EMAIL_TO is empty"
    assert "notification" not in run_async(_reports(url))[DAY].data
    assert run_async(_notification_emails(url)) == []

    loud = definitions(url, tmp_path, recipients=["ops@alianza.example", " ops@alianza.example"])
    for _ in range(2):
        assert (
            loud.resolve_job_def("daily_report")
            .execute_in_process(partition_key=DAY.isoformat(), instance=instance)
            .success
        )
    # The duplicate address is sent once; the second run enqueues nothing.
    assert [to for _, to, _, _ in run_async(_notification_emails(url))] == ["ops@alianza.example"]


async def test_two_runs_of_one_day_at_once_enqueue_one_email(
    engine: AsyncEngine, database_url: str
) -> None:
    data = {"report_date": DAY.isoformat(), "figures": 1}
    emails = render.notification_rows(
        {
            **figures.report_data(
                DAY, *figures.day_window(DAY), _zero_db(), figures.SessionCleanup()
            )
        },
        ["ops@alianza.example"],
        None,
    )
    async with migrated_engine(database_url) as other:
        tables = await platform_tables(engine, default_map())
        first, second = await asyncio.gather(
            store_report(engine, tables, DAY, data, emails),
            store_report(other, await platform_tables(other, default_map()), DAY, data, emails),
        )
    assert sorted([len(first.enqueued_email_ids), len(second.enqueued_email_ids)]) == [0, 1]
    assert first.data == second.data
    async with engine.connect() as conn:
        assert str(await conn.scalar(select(EmailQueue.id))) in (
            first.enqueued_email_ids + second.enqueued_email_ids
        )
        assert len((await conn.execute(select(EmailQueue.id))).all()) == 1
        assert len((await conn.execute(select(DailyReport.id))).all()) == 1


def _zero_db() -> dict[str, int]:
    return dict.fromkeys(figures.FIGURE_KEYS, 0)


# -- definitions: schedule, lineage, policies -------------------------------------------------------


def test_the_0200_tick_asks_for_the_previous_day(tmp_path: Path) -> None:
    schedule = task.TASK.schedule(task.job, load_settings())
    assert schedule is not None
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    defs = dg.Definitions(
        assets=[STREAMINGS, EMAIL_QUEUE, USER_SESSIONS, STREAM_VIDEOS, *task.assets],
        jobs=[task.job],
        schedules=[schedule],
        resources=resources(f"sqlite:///{tmp_path / 'app.db'}", tmp_path),
    )
    instance = DagsterInstance.get()
    tick = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=tick,
        repository_def=defs.get_repository_def(),
    )
    requests = (
        defs.resolve_schedule_def("daily_report_schedule").evaluate_tick(context).run_requests
    )
    assert requests is not None
    [request] = requests
    assert request.partition_key == "2026-11-27"
    assert request.tags[TAG_CRON] == "0 2 * * *"


def test_daily_reports_is_downstream_of_the_tables_with_its_policies(tmp_path: Path) -> None:
    defs = definitions(f"sqlite:///{tmp_path / 'app.db'}", tmp_path)
    graph = defs.resolve_asset_graph()
    node = graph.get(AssetKey("daily_reports"))
    assert node.parent_keys == {
        AssetKey(name) for name in ("streamings", "email_queue", "user_sessions", "stream_videos")
    }
    assert node.partitions_def == task.PARTITIONS
    assert task.PARTITIONS.get_first_partition_key() == task.FIRST_REPORT_DAY
    assets_def = defs.resolve_assets_def(AssetKey("daily_reports"))
    policy = assets_def.op.retry_policy
    assert policy is not None
    assert (policy.max_retries, policy.delay) == (3, 30)
    job_def = defs.resolve_job_def("daily_report")
    # 4 attempts of 30 min, 3 waits of 30 s, and a minute to start: the run monitor's backstop.
    assert job_def.tags[MAX_RUNTIME_TAG] == str(4 * 1800 + 3 * 30 + 60)
    assert job_def.partitions_def == task.PARTITIONS


def test_a_rerun_after_the_cleanup_runs_were_pruned_keeps_the_sessions_figures(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    run_async(_insert(url))
    run_async(_add_sessions(url, expired=2, of_deleted_user=1))
    instance = DagsterInstance.get()
    with freeze_time(midnight(DAY) + 2 * HOUR):
        cleanup_run = cleanup.job.execute_in_process(
            resources={"database": Database(url=url)}, instance=instance
        )
    job_def = definitions(url, tmp_path).resolve_job_def("daily_report")
    assert job_def.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
    before = run_async(_reports(url))[DAY]
    assert before.data["sessions"]["cleaned"] == 3

    # What cleanup_expired_sessions does to runs past their retention: gone, events and all.
    instance.delete_run(cleanup_run.run_id)
    assert figures.sessions_cleaned(instance, *figures.day_window(DAY)).runs == 0
    assert job_def.execute_in_process(partition_key=DAY.isoformat(), instance=instance).success
    after = run_async(_reports(url))[DAY]
    assert after.data == before.data
    assert after.updated_at > before.updated_at
