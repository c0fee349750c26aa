"""The Stream webhook path in the running deployment: a video Stream finishes is delivered, signed,
to the receiver of deploy/Procfile, stored, and settled by a run the daemon's sensor launches."""

from __future__ import annotations

import secrets

import psycopg
from dagster import DagsterRunStatus, RunsFilter

from alianza_jobs.emulators import StreamEmulator, VideoSpec
from alianza_jobs.platform.tags import TAG_TRIGGER
from alianza_jobs_tests.e2e.harness import Deployment, wait_for


def _row(deployment: Deployment, uid: str) -> tuple[str, float | None] | None:
    with psycopg.connect(deployment.app_db_url) as conn:
        row = conn.execute(
            "SELECT status, duration FROM streamings WHERE external_id = %s", [uid]
        ).fetchone()
    return (row[0], row[1]) if row else None


def test_a_video_stream_finishes_is_settled_through_its_webhook(deployment: Deployment) -> None:
    uid = secrets.token_hex(16)
    with psycopg.connect(deployment.app_db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO streamings (external_id, provider, status, created_at, updated_at) "
            "VALUES (%s, 'cloudflare', 'queued', now(), now())",
            [uid],
        )
    StreamEmulator(deployment.emulator_state_dir).add_videos(
        [VideoSpec(uid=uid, outcome="ready", duration=31.5, final_after_s=1)]
    )

    # Well within the video queue's five-minute tick: the webhook's doing, not the cron's.
    wait_for("the row to be ready", lambda: _row(deployment, uid) == ("ready", 31.5), timeout=120)

    def stored() -> list[tuple[bool, str]]:
        with psycopg.connect(deployment.app_db_url) as conn:
            rows = conn.execute(
                "SELECT applied_at IS NOT NULL, state FROM stream_webhook_deliveries WHERE uid = %s",
                [uid],
            ).fetchall()
        return [(bool(applied), str(state)) for applied, state in rows]

    # The run settles the row, then marks the delivery applied in its next transaction (a crash
    # between the two re-applies it, harmlessly): the row can be seen ready a moment before.
    wait_for("the delivery to be marked applied", lambda: any(a for a, _ in stored()), timeout=60)
    assert stored() == [(True, "ready")]  # stored once, applied

    def sensor_run_succeeded() -> bool:
        runs = deployment.instance.get_runs(
            filters=RunsFilter(
                job_name="apply_stream_webhooks", statuses=[DagsterRunStatus.SUCCESS]
            )
        )
        return any(run.tags.get(TAG_TRIGGER) == "sensor" for run in runs)

    # The row is written mid-run; the run's end is recorded a moment later.
    wait_for("the sensor's apply_stream_webhooks run to succeed", sensor_run_succeeded, timeout=60)
    # The emulator saw its delivery answered.
    [delivery] = [
        d
        for d in StreamEmulator(deployment.emulator_state_dir).webhook_deliveries()
        if d["uid"] == uid
    ]
    assert delivery["last_status"] == 200 and delivery["delivered_us"] is not None
