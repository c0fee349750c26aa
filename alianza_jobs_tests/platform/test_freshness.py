"""Freshness windows follow each job's effective cron: the longest gap between ticks + the job's
longest run + a minute, or a deadline after each tick when every run fits between two ticks."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from dagster import AssetKey, AssetSpec
from dagster._core.definitions.freshness import CronFreshnessPolicy, TimeWindowFreshnessPolicy

from alianza_jobs.defs.emails import process_email_queue
from alianza_jobs.defs.reports import daily_report
from alianza_jobs.defs.videos import process_streaming_video_queue, sync_stream_catalog
from alianza_jobs.platform.freshness import (
    SLACK,
    derive,
    describe,
    fresh_tables,
    freshness_policy,
    longest_gap,
    shifted_cron,
    table_freshness,
    with_freshness,
)
from alianza_jobs.platform.tags import META_FRESHNESS, META_MAINTAINED_BY
from alianza_jobs.platform.task import TaskSpec
from alianza_jobs.settings import SettingsError, load_settings

EMAIL = process_email_queue.TASK
VIDEOS = process_streaming_video_queue.TASK
CATALOG = sync_stream_catalog.TASK
REPORT = daily_report.TASK


def _window(policy: object) -> timedelta:
    assert isinstance(policy, TimeWindowFreshnessPolicy), policy
    return policy.fail_window.to_timedelta()


@pytest.mark.parametrize(
    ("cron", "gap"),
    [
        ("* * * * *", timedelta(minutes=1)),
        ("*/5 * * * *", timedelta(minutes=5)),
        ("0 2 * * *", timedelta(days=1)),
        ("5,35 */2 * * *", timedelta(hours=1, minutes=30)),
        ("0 9 * * 1-5", timedelta(days=3)),  # Friday 09:00 to Monday 09:00
        ("* 9-17 * * mon-fri", timedelta(days=2, hours=15, minutes=1)),  # Fri 17:59 -> Mon 09:00
        ("@weekly", timedelta(days=7)),
        ("0 0 1 * *", timedelta(days=31)),
    ],
)
def test_longest_gap_between_ticks(cron: str, gap: timedelta) -> None:
    assert longest_gap(cron) == gap


def test_every_minute_queue_gets_a_time_window_of_gap_runtime_and_slack() -> None:
    # 1 min between ticks + 7 min 20 s (4 attempts of 60 s, 140 s of backoff, 60 s start-up)
    # + 1 min, rounded up: 10 min. Its run can outlast the next tick, so no per-tick deadline.
    assert EMAIL.max_runtime == timedelta(minutes=7, seconds=20)
    fresh = derive(EMAIL, "* * * * *")
    assert _window(fresh.policy) == timedelta(minutes=10)
    assert "`* * * * *` (1 min)" in fresh.why and "(7 min 20 s)" in fresh.why


def test_every_five_minutes_queue() -> None:
    assert VIDEOS.max_runtime == timedelta(minutes=16)
    assert _window(freshness_policy(VIDEOS, "*/5 * * * *")) == timedelta(minutes=22)


def test_a_batch_job_whose_run_outlasts_the_next_tick_gets_a_window() -> None:
    quick = TaskSpec(name="quick", description="", cron="* * * * *", timeout=timedelta(seconds=5))
    # 65 s + 60 s of slack does not fit in the minute to the next tick: 1 + 1:05 + 1 -> 4 min.
    assert _window(freshness_policy(quick, "* * * * *")) == timedelta(minutes=4)
    # Every hour, it fits: a deadline 3 min after each tick.
    hourly = freshness_policy(quick, "0 * * * *")
    assert isinstance(hourly, CronFreshnessPolicy)
    assert (hourly.deadline_cron, hourly.lower_bound_delta) == ("3 * * * *", timedelta(minutes=3))


def test_the_daily_report_gets_a_deadline_after_its_0200_tick() -> None:
    policy = freshness_policy(REPORT, "0 2 * * *")
    assert isinstance(policy, CronFreshnessPolicy)
    # 4 attempts of 30 min + 3 delays of 30 s + 60 s of start-up = 2 h 2 min 30 s; + 1 min, up.
    assert REPORT.max_runtime == timedelta(hours=2, minutes=2, seconds=30)
    assert policy.deadline_cron == "4 4 * * *"
    assert policy.lower_bound_delta == timedelta(hours=2, minutes=4)
    assert policy.timezone == "UTC"
    # The window the deadline judges opens at the tick itself: the 02:00 run's update counts.
    deadline = timedelta(hours=4, minutes=4)
    assert deadline - policy.lower_bound_delta == timedelta(hours=2)
    assert policy.lower_bound_delta >= REPORT.max_runtime + SLACK


def test_a_cron_override_moves_the_window() -> None:
    settings = load_settings({"ALIANZA_CRON_PROCESS_EMAIL_QUEUE": "*/30 * * * *"})
    fresh = table_freshness(EMAIL, settings, "email_queue")
    # 30 + 7:20 + 1 = 38:20, rounded up. A queue keeps a window even when its run would fit
    # between two ticks: the work sensor's runs and the skipped ticks update it at any time.
    assert _window(fresh.policy) == timedelta(minutes=39)
    assert "`*/30 * * * *`" in fresh.why


def test_the_environment_cron_counts() -> None:
    dev = load_settings(
        {
            "ALIANZA_ENV": "dev",
            "DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/none",
            "CLOUDFLARE_ACCOUNT_ID": "acc",
            "CLOUDFLARE_STREAM_API_TOKEN": "token-value",
            "RESEND_API_KEY": "re_key_value",
            "EMAIL_FROM": "jobs@alianza.example",
        }
    )
    # dev runs the video queue every 10 minutes: 10 + 16 + 1.
    assert _window(table_freshness(VIDEOS, dev, "streamings").policy) == timedelta(minutes=27)


def test_a_report_cron_whose_run_outlasts_its_ticks_falls_back_to_a_window() -> None:
    settings = load_settings({"ALIANZA_CRON_DAILY_REPORT": "*/5 * * * *"})
    # A 2 h run cannot land between ticks 5 min apart: 5 min + 2:02:30 + 1 min, rounded up.
    assert _window(table_freshness(REPORT, settings, "daily_reports").policy) == timedelta(
        hours=2, minutes=9
    )


def test_a_window_override_replaces_the_derived_one() -> None:
    settings = load_settings({"ALIANZA_FRESHNESS_DAILY_REPORTS_SECONDS": "90"})
    fresh = table_freshness(REPORT, settings, "daily_reports")
    assert _window(fresh.policy) == timedelta(seconds=90)
    assert (
        fresh.why == "stale 90 s after its last update (ALIANZA_FRESHNESS_DAILY_REPORTS_SECONDS=90)"
    )
    # Only the table it names.
    assert isinstance(
        table_freshness(REPORT, load_settings({}), "daily_reports").policy, CronFreshnessPolicy
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "ALIANZA_FRESHNESS_EMAIL_QUEUE_SECONDS",
            "59",
            "ALIANZA_FRESHNESS_EMAIL_QUEUE_SECONDS='59' is not a whole number of seconds of at "
            "least 60 (Dagster's shortest freshness window)",
        ),
        ("ALIANZA_FRESHNESS_EMAIL_QUEUE_SECONDS", "5m", "is not a whole number of seconds"),
        ("ALIANZA_FRESHNESS_EMAIL_QUEUE_SECONDS", "120.5", "is not a whole number of seconds"),
        (
            "ALIANZA_FRESHNESS_EMAIL_QUEUE",
            "120",
            "ALIANZA_FRESHNESS_EMAIL_QUEUE='120': expected "
            "ALIANZA_FRESHNESS_<TABLE>_SECONDS=<seconds>",
        ),
    ],
)
def test_a_bad_window_override_fails_the_load_naming_it(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings({variable: value})


def test_an_empty_override_is_unset() -> None:
    assert load_settings({"ALIANZA_FRESHNESS_EMAIL_QUEUE_SECONDS": " "}).freshness_overrides == {}


def test_an_override_naming_no_table_fails_the_load() -> None:
    from alianza_jobs.definitions import build_defs

    with pytest.raises(SettingsError) as err:
        build_defs(load_settings({"ALIANZA_FRESHNESS_STREAM_VIDEO_SECONDS": "120"}))
    assert str(err.value) == (
        "ALIANZA_FRESHNESS_STREAM_VIDEO_SECONDS=120 names no table with a freshness policy "
        "(tables: daily_reports, email_queue, stream_videos, streamings, user_sessions)"
    )


def test_the_jobs_tables_carry_their_policy_job_and_reason() -> None:
    from alianza_jobs.definitions import build_defs

    defs = build_defs(load_settings({}))
    tables = {key.to_user_string(): spec for key, spec in fresh_tables(defs.assets or []).items()}
    assert set(tables) == {
        "streamings",
        "email_queue",
        "stream_videos",
        "daily_reports",
        "user_sessions",
    }
    maintained = {name: spec.metadata[META_MAINTAINED_BY] for name, spec in tables.items()}
    assert maintained == {
        "streamings": "process_streaming_video_queue",
        "email_queue": "process_email_queue",
        "stream_videos": "sync_stream_catalog",
        "daily_reports": "daily_report",
        "user_sessions": "cleanup_expired_sessions",
    }
    assert _window(tables["stream_videos"].freshness_policy) == timedelta(minutes=59)
    assert tables["email_queue"].metadata[META_FRESHNESS].startswith("stale 10 min after")
    assert isinstance(tables["daily_reports"].freshness_policy, CronFreshnessPolicy)
    sessions = tables["user_sessions"].freshness_policy
    assert isinstance(sessions, CronFreshnessPolicy)
    assert sessions.deadline_cron == "3 3 * * *"


def test_with_freshness_keeps_the_rest_of_the_spec() -> None:
    spec = AssetSpec("email_queue", description="d", group_name="g", kinds={"table"})
    attached = with_freshness(spec, EMAIL, load_settings({}))
    assert attached.key == AssetKey("email_queue")
    assert (attached.description, attached.group_name, attached.kinds) == ("d", "g", {"table"})
    assert attached.freshness_policy is not None
    assert spec.freshness_policy is None  # a new spec; the module's constant is untouched


@pytest.mark.parametrize(
    ("cron", "offset", "shifted"),
    [
        ("0 2 * * *", timedelta(minutes=124), "4 4 * * *"),
        ("0 2,14 * * *", timedelta(minutes=124), "4 4,16 * * *"),
        ("30 23 * * *", timedelta(minutes=45), "15 0 * * *"),  # past midnight, every day
        ("0 9 * * 1-5", timedelta(minutes=124), "4 11 * * 1-5"),
        # No plain cron says these: 02:45 and 03:15; Monday 23:00 moved into Tuesday.
        ("0,30 2 * * *", timedelta(minutes=45), None),
        ("0 23 * * 1", timedelta(minutes=124), None),
    ],
)
def test_shifted_cron(cron: str, offset: timedelta, shifted: str | None) -> None:
    assert shifted_cron(cron, offset) == shifted


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=90), "90 s"),
        (timedelta(minutes=10), "10 min"),
        (timedelta(minutes=7, seconds=20), "7 min 20 s"),
        (timedelta(hours=2, minutes=4), "2 h 4 min"),
        (timedelta(days=1), "1 day"),
        (timedelta(days=3), "3 days"),
    ],
)
def test_describe(value: timedelta, text: str) -> None:
    assert describe(value) == text
