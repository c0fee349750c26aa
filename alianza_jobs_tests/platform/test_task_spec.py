"""TaskSpec: what one declaration becomes (tags, retry policy, max runtime, crons per env)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from dagster import Backoff, DefaultScheduleStatus, Jitter, OpExecutionContext

from alianza_jobs.platform.schedules import check_cron_overrides
from alianza_jobs.platform.tags import MAX_RUNTIME_TAG, TAG_TIMEOUT
from alianza_jobs.platform.task import Retry, TaskReport, TaskSpec
from alianza_jobs.settings import SettingsError, load_settings

EMAIL_LIKE = TaskSpec(
    name="process_email_queue",
    description="Sends queued emails.",
    cron="* * * * *",
    timeout=timedelta(minutes=1),
    retry=Retry(3, timedelta(seconds=10), Backoff.EXPONENTIAL, Jitter.PLUS_MINUS),
)
VIDEO_LIKE = TaskSpec(
    name="process_streaming_video_queue",
    description="Checks videos.",
    cron="*/5 * * * *",
    env_crons={"dev": "*/10 * * * *", "uat": "*/15 * * * *"},
    timeout=timedelta(minutes=2),
)
MANUAL = TaskSpec(name="replay", description="Manual.", timeout=timedelta(minutes=5))


def test_max_runtime_covers_every_attempt_and_the_longest_waits() -> None:
    # 4 attempts x 60 s + waits (1+3+7) x 10 s + jitter 3 x 10 s + 60 s start-up grace.
    assert EMAIL_LIKE.max_runtime == timedelta(seconds=240 + 110 + 30 + 60)
    assert EMAIL_LIKE.max_attempts == 4
    assert MANUAL.max_runtime == timedelta(minutes=5, seconds=60)


def test_retry_policy_is_dagsters_own() -> None:
    policy = EMAIL_LIKE.retry.policy if EMAIL_LIKE.retry else None
    assert policy is not None
    assert (policy.max_retries, policy.delay, policy.backoff, policy.jitter) == (
        3,
        10,
        Backoff.EXPONENTIAL,
        Jitter.PLUS_MINUS,
    )
    assert EMAIL_LIKE.describe_retry() == "3 retries, 10 s delay, exponential, jitter"


def test_timeout_and_max_runtime_are_visible_as_tags() -> None:
    @EMAIL_LIKE.op
    async def send_due_emails(context: OpExecutionContext) -> TaskReport:
        return TaskReport()

    job = EMAIL_LIKE.job(send_due_emails)
    assert send_due_emails.tags[TAG_TIMEOUT] == "60"
    assert "Timeout: 60 s per attempt" in (send_due_emails.description or "")
    assert job.run_tags[MAX_RUNTIME_TAG] == "440"
    assert send_due_emails.retry_policy is not None


def test_op_named_like_its_job_is_refused() -> None:
    async def process_email_queue(context: OpExecutionContext) -> TaskReport:
        return TaskReport()

    with pytest.raises(ValueError, match="name the op function after what it does"):
        EMAIL_LIKE.op(process_email_queue)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("local", "*/5 * * * *"),
        ("dev", "*/10 * * * *"),
        ("uat", "*/15 * * * *"),
        ("prod", "*/5 * * * *"),
    ],
)
def test_cron_per_environment_like_wrangler_envs(env: str, expected: str) -> None:
    environ = {"ALIANZA_ENV": env}
    if env != "local":
        environ |= {
            "DATABASE_URL": "postgresql://u:p@db/app",
            "CLOUDFLARE_ACCOUNT_ID": "acc",
            "CLOUDFLARE_STREAM_API_TOKEN": "tok",
            "RESEND_API_KEY": "re_key",
            "EMAIL_FROM": "jobs@example.com",
        }
    assert VIDEO_LIKE.cron_for(load_settings(environ)) == expected


def test_cron_override_from_the_environment() -> None:
    settings = load_settings({"ALIANZA_CRON_PROCESS_STREAMING_VIDEO_QUEUE": "*/2 * * * *"})
    assert VIDEO_LIKE.cron_for(settings) == "*/2 * * * *"


@pytest.mark.parametrize("bad", ["61 * * * *", "every minute", "* * * *", "0 0 31 2 *"])
def test_invalid_cron_override_names_variable_and_value(bad: str) -> None:
    settings = load_settings({"ALIANZA_CRON_PROCESS_EMAIL_QUEUE": bad})
    with pytest.raises(SettingsError) as err:
        check_cron_overrides(settings, [EMAIL_LIKE.name, VIDEO_LIKE.name])
    assert str(err.value) == (
        f"ALIANZA_CRON_PROCESS_EMAIL_QUEUE={bad!r} is not a valid cron expression"
    )


def test_cron_override_for_unknown_job_is_a_typo_not_a_no_op() -> None:
    settings = load_settings({"ALIANZA_CRON_PROCES_EMAIL_QUEUE": "* * * * *"})
    with pytest.raises(
        SettingsError, match="ALIANZA_CRON_PROCES_EMAIL_QUEUE='\\* \\* \\* \\* \\*' names no job"
    ):
        check_cron_overrides(settings, [EMAIL_LIKE.name, VIDEO_LIKE.name])


def test_manual_task_has_no_schedule_and_refuses_a_cron_override() -> None:
    @MANUAL.op
    async def replay_items(context: OpExecutionContext) -> TaskReport:
        return TaskReport()

    job = MANUAL.job(replay_items)
    with pytest.raises(ValueError, match="manual-only"):
        MANUAL.schedule(job, load_settings({}))
    with pytest.raises(SettingsError, match="manual-only"):
        MANUAL.cron_for(load_settings({"ALIANZA_CRON_REPLAY": "* * * * *"}))


def test_schedule_is_utc_running_and_described() -> None:
    @EMAIL_LIKE.op
    async def send_due_emails(context: OpExecutionContext) -> TaskReport:
        return TaskReport()

    schedule = EMAIL_LIKE.schedule(EMAIL_LIKE.job(send_due_emails), load_settings({}))
    assert schedule is not None
    assert schedule.name == "process_email_queue_schedule"
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert "* * * * *" in (schedule.description or "")
    assert schedule.tags["owner"] == "team:platform"


def test_invalid_default_cron_fails_at_declaration() -> None:
    with pytest.raises(ValueError, match="not a valid cron"):
        TaskSpec(name="x", description="x", cron="61 * * * *", timeout=timedelta(seconds=1))
