"""The Stream webhook receiver under a flood: ``alianza-jobs webhooks serve`` as deployed (its own
process, on the backend's app database), sent thousands of signed deliveries a minute by 16
keep-alive connections at a steady rate, a share of them sent twice (Stream re-sending what it
got no answer to). Measured: each request's time from send to answer (p50, p95, p99, max), the
receiver's peak resident memory (``VmHWM``), what was stored (every distinct delivery once,
nothing lost), and then how many ``apply_stream_webhooks`` runs settle the whole flood (batches,
not a run per delivery). The TypeScript package had no receiver: there is no baseline to hold it
against, only the issue's bounds (under 100 MB, p99 under 100 ms).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import func, insert, select

from alianza_jobs.clients.webhooks import sign_stream_webhook
from alianza_jobs.db.engine import create_engine
from alianza_jobs.db.platform_models import Streaming
from alianza_jobs.defs.videos.webhook_sql import DELIVERIES
from benchmarks.harness import REPO, CpuWindow, child_env, free_port, load1, wait_for
from benchmarks.workloads.base import Context, Measurement, Target, Workload
from benchmarks.workloads.summary import find

SECRET = "whsec-bench-flood-0123456789abcdef"
DELIVERIES_FULL, DELIVERIES_SMOKE = 6000, 200
RATE_PER_S = 100.0  # 6,000 a minute
CONNECTIONS = 16
RESENT_SHARE = 0.05
SEED = 1402
MAX_RSS_MB = 100.0
MAX_P99_S = 0.100
MAX_APPLY_RUNS = 3


@dataclass
class FloodMeasurement(Measurement):
    samples: int | None = None
    """Requests sent (distinct deliveries plus the ones sent twice)."""
    not_done: int | None = None
    """Distinct deliveries not stored (lost) plus requests not answered 200."""
    runs: int | None = None
    """apply_stream_webhooks runs until nothing was pending."""
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    window_s: float | None = None


def _bin() -> Path:
    here = Path(sys.executable).parent
    return here if (here / "alianza-jobs").exists() else REPO / ".venv" / "bin"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _bodies(count: int) -> list[bytes]:
    rng = random.Random(SEED)
    out = []
    for i in range(count):
        uid = hashlib.sha256(f"flood-{i}".encode()).hexdigest()[:32]
        video = {
            "uid": uid,
            "status": {"state": "ready", "pctComplete": "100.000000"},
            "readyToStream": True,
            "duration": round(rng.uniform(5, 1800), 3),
            "meta": {"name": f"upload {i}"},
            "created": "2026-12-02T00:00:00.000000Z",
            "modified": "2026-12-02T00:05:00.000000Z",
        }
        out.append(json.dumps(video, separators=(",", ":")).encode())
    return out


async def _queued_rows(url: str, bodies: list[bytes]) -> None:
    engine = create_engine(url)
    try:
        rows = [
            {"external_id": json.loads(b)["uid"], "provider": "cloudflare", "status": "queued"}
            for b in bodies
        ]
        async with engine.begin() as conn:
            for start in range(0, len(rows), 2000):
                await conn.execute(insert(Streaming), rows[start : start + 2000])
    finally:
        await engine.dispose()


async def _counts(url: str) -> tuple[int, int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            stored = int(await conn.scalar(select(func.count()).select_from(DELIVERIES)) or 0)
            pending = int(
                await conn.scalar(
                    select(func.count())
                    .select_from(DELIVERIES)
                    .where(DELIVERIES.c.applied_at.is_(None))
                )
                or 0
            )
            ready = int(
                await conn.scalar(
                    select(func.count()).select_from(Streaming).where(Streaming.status == "ready")
                )
                or 0
            )
    finally:
        await engine.dispose()
    return stored, pending, ready


async def _flood(root: str, sends: list[bytes]) -> tuple[list[float], int]:
    """Send ``sends`` at RATE_PER_S over CONNECTIONS keep-alive connections; returns each answered
    request's seconds and how many were not answered 200."""
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    latencies: list[float] = []
    bad = 0
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for i, body in enumerate(sends):
        queue.put_nowait((i, body))
    start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal bad
        while not queue.empty():
            i, body = queue.get_nowait()
            # The steady rate of a flood: request i leaves at i / rate, not as fast as we can.
            delay = start + i / RATE_PER_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            headers = {
                "Webhook-Signature": sign_stream_webhook(body, SECRET, timestamp=int(time.time())),
                "Content-Type": "application/json",
            }
            sent = time.perf_counter()
            try:
                response = await client.post(
                    f"{root}/stream/webhook", content=body, headers=headers
                )
            except httpx.HTTPError:
                bad += 1
                continue
            latencies.append(time.perf_counter() - sent)
            if response.status_code != 200:
                bad += 1

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONNECTIONS)))
    return latencies, bad


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class WebhookFlood(Workload):
    name = "webhook_flood"
    title = "Stream webhook receiver under a flood"
    data = (
        f"`alianza-jobs webhooks serve` in its own process on a migrated database; "
        f"{DELIVERIES_FULL:,} distinct signed deliveries (each a ready video, one queued "
        f"`streamings` row each) sent at {RATE_PER_S:g}/s ({RATE_PER_S * 60:,.0f} a minute) over "
        f"{CONNECTIONS} keep-alive connections, {RESENT_SHARE:.0%} of them sent twice. Latency: "
        "send to answer, per request. Peak RSS: the receiver's `VmHWM`. Stored: distinct "
        "deliveries in `stream_webhook_deliveries` (the twice-sent stored once). Then "
        "`alianza-jobs run apply_stream_webhooks` until nothing is pending: the runs that took."
    )
    in_default_run = False

    def execute(self, ctx: Context) -> list[Measurement]:
        return [self._once(ctx, repetition) for repetition in range(ctx.repeat)]

    def _once(self, ctx: Context, repetition: int) -> Measurement:
        count = DELIVERIES_SMOKE if ctx.smoke else DELIVERIES_FULL
        bodies = _bodies(count)
        rng = random.Random(SEED + repetition)
        resent = rng.sample(bodies, int(count * RESENT_SHARE))
        sends = bodies + resent
        rng.shuffle(sends)
        port = free_port()
        log_path = ctx.work_dir / "logs" / f"{self.name}-{ctx.slug}-r{repetition + 1}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        base: dict[str, Any] = {
            "workload": self.name,
            "backend": ctx.backend,
            "case": "receiver",
            "size": count,
            "repetition": repetition,
        }
        with ctx.databases.empty() as url:
            asyncio.run(_queued_rows(url, bodies))
            env = child_env(
                {
                    "ALIANZA_ENV": "local",
                    "DATABASE_URL": url,
                    "CLOUDFLARE_STREAM_WEBHOOK_SECRET": SECRET,
                    "DAGSTER_HOME": str(ctx.dagster_home),
                    "LOG_LEVEL": "warning",
                }
            )
            with log_path.open("ab") as log:
                receiver = subprocess.Popen(
                    [str(_bin() / "alianza-jobs"), "webhooks", "serve", "--port", str(port)],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            root = f"http://127.0.0.1:{port}"
            try:
                wait_for(
                    "the receiver",
                    lambda: _answers(f"{root}/healthz") or receiver.poll() is not None,
                    timeout_s=60,
                )
                if receiver.poll() is not None:
                    return FloodMeasurement(**base, success=False, error="the receiver exited")
                ctx.quiet.wait([receiver.pid], ctx.log)
                window = CpuWindow([receiver.pid]).start()
                load_start = load1()
                began = time.perf_counter()
                latencies, bad = asyncio.run(_flood(root, sends))
                elapsed = time.perf_counter() - began
                rss = _peak_rss_mb(receiver.pid)
                cpu = psutil.Process(receiver.pid).cpu_times()
                foreign = window.foreign_cores(cpu.user + cpu.system)
            finally:
                receiver.terminate()
                try:
                    receiver.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    receiver.kill()
                    receiver.wait()
            stored, pending, _ = asyncio.run(_counts(url))
            runs = 0
            while pending and runs < 5:
                runs += 1
                done = subprocess.run(
                    [str(_bin() / "alianza-jobs"), "run", "apply_stream_webhooks", "--json"],
                    env=env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                with log_path.open("a") as log_text:
                    log_text.write(done.stdout + done.stderr)
                _, pending, ready = asyncio.run(_counts(url))
            _, pending, ready = asyncio.run(_counts(url))
        lost = count - stored
        ok = not bad and lost == 0 and pending == 0 and ready == count
        m = FloodMeasurement(
            **base,
            success=ok,
            error=None
            if ok
            else f"{bad} bad answers, {lost} lost, {pending} pending, {ready} ready",
            wall_s=round(elapsed, 2),
            window_s=round(elapsed, 2),
            samples=len(sends),
            not_done=bad + lost,
            runs=runs,
            p50_s=_round(_percentile(latencies, 0.50)),
            p95_s=_round(_percentile(latencies, 0.95)),
            p99_s=_round(_percentile(latencies, 0.99)),
            max_s=_round(max(latencies) if latencies else None),
            peak_rss_mb=rss,
            cpu_s=round(cpu.user + cpu.system, 2),
            foreign_cores=foreign,
            load1_start=load_start,
            load1_end=load1(),
            counters={
                "stored": stored,
                "sent_twice": len(resent),
                "rate_per_min": len(sends) / elapsed * 60,
            },
        )
        ctx.log(
            f"  webhook flood #{repetition + 1}: {len(sends)} requests in {elapsed:.1f} s, "
            f"p50 {m.p50_s} s, p99 {m.p99_s} s, max {m.max_s} s, peak RSS {rss} MB, stored "
            f"{stored}/{count}, {runs} apply run(s)" + ("" if ok else f"; FAILED: {m.error}")
        )
        return m

    def targets(self, backend: str, summaries: Sequence[Mapping[str, Any]]) -> list[Target]:
        flood = find(summaries, "receiver")
        if flood is None:
            return []
        med = flood["median"]
        return [
            Target(
                "webhook flood: receiver peak RSS",
                backend,
                med.get("peak_rss_mb"),
                MAX_RSS_MB,
                "<=",
                unit="MB",
            ),
            Target(
                "webhook flood: answer p99", backend, med.get("p99_s"), MAX_P99_S, "<=", unit="s"
            ),
            Target(
                "webhook flood: deliveries lost or refused",
                backend,
                med.get("not_done"),
                0,
                "<=",
                unit="items",
            ),
            Target(
                "webhook flood: apply runs for the whole flood",
                backend,
                med.get("runs"),
                MAX_APPLY_RUNS,
                "<=",
                unit="runs",
            ),
        ]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
