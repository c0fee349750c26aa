"""The real processes of a deployment, started and stopped by the e2e suite.

A :class:`Deployment` is what ``deploy/README.md`` describes, on loopback: ``dagster-webserver`` and
``dagster-daemon`` with ``deploy/dagster.yaml`` (Postgres storage from ``DAGSTER_PG_*``), the app in
``ALIANZA_ENV=prod`` with its own Postgres database, and ``alianza-jobs emulate`` standing in for
Cloudflare Stream and Resend (requiring the configured token and key, as the real ones do).

Every process starts in a session of its own, so stopping it reaches what it spawned too (the
code servers of the webserver and the daemon, and the runs those start): nothing outlives the suite.
Waiting is always polling a condition under a deadline (:func:`wait_for`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import psutil
import psycopg
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter
from dagster._core.events.log import EventLogEntry
from dagster._core.scheduler.instigation import TickData
from dagster._serdes import deserialize_value
from dagster_graphql import DagsterGraphQLClient

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts" / "e2e"
PRODUCTION_CONFIG = REPO / "deploy" / "dagster.yaml"
PRODUCTION_WORKSPACE = REPO / "deploy" / "workspace.yaml"
PROCFILE = REPO / "deploy" / "Procfile"
FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)

# What the suite changes in deploy/dagster.yaml, and nothing else: it must see a daemon restart
# resolved within the suite's minutes, not production's. The storage, the queue's limits, run
# retries and retention are production's own.
TEST_OVERRIDES: dict[str, dict[str, Any]] = {
    "run_monitoring": {"start_timeout_seconds": 90, "poll_interval_seconds": 2},
    "run_coordinator.config": {"dequeue_interval_seconds": 1},
}


def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float, interval: float = 0.5
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {value!r})"
            )
        time.sleep(interval)  # polling interval under the deadline above, not synchronization


def production_config(
    overrides: Mapping[str, Mapping[str, Any]] = TEST_OVERRIDES,
) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    for dotted, values in overrides.items():
        section = config
        for key in dotted.split("."):
            section = section[key]
        section.update(values)
    return config


def procfile() -> dict[str, str]:
    """The process types of deploy/Procfile: {name: command}."""
    processes: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def procfile_argv(name: str) -> list[str]:
    """A Procfile process as a Procfile runner starts it: through a shell (which expands
    ``${PORT:-3000}``), ``exec`` so the process itself is the one a signal reaches."""
    return ["/bin/sh", "-c", f"exec {procfile()[name]}"]


@dataclass
class Service:
    """A long-running process in its own session (process group), its output in a log file."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _groups: list[int] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"{self.name}.{self.starts}.log").open("wb")
        self._logs.append(log)
        self.proc = subprocess.Popen(
            list(self.argv),
            cwd=self.cwd,
            env=dict(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._groups.append(self.proc.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_main_process(self) -> None:
        """SIGKILL to the main process only, as a crash (or the OOM killer) would do it: what it
        spawned lives on, orphaned."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(timeout=5)
        for log in self._logs:
            log.close()

    def log_text(self) -> str:
        return "\n".join(
            (self.log_dir / f"{self.name}.{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
        )


def stop_all(services: Sequence[Service], grace: float = 10.0) -> None:
    """SIGTERM to every process group the services ever had, SIGKILL to what is left after
    ``grace`` seconds. All at once: each webserver and daemon waits for its code servers."""
    groups = [g for service in services for g in service._groups]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = [g for g in groups if _group_alive(g)]
        for group in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_group_alive(g) for g in alive):
            for service in services:
                if service.proc is not None:
                    service.proc.poll()  # reap our own children as they exit
            time.sleep(0.2)  # waiting for processes to exit, bounded
    for service in services:
        service.close()


def _group_alive(group: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@dataclass
class Deployment:
    root: Path
    home: Path
    env: dict[str, str]
    port: int
    emulator_url: str
    emulator_state_dir: Path
    e2e_state_dir: Path
    locations: int
    app_db_url: str
    dagster_db_url: str
    emulator: Service
    daemon: Service
    webserver: Service
    webhooks: Service
    webhook_secret: str
    startup_s: float = 0.0
    instance: DagsterInstance = field(init=False)
    graphql: DagsterGraphQLClient = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- processes ------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.emulator.start()
        wait_for(
            "the emulator to answer",
            lambda: _http_ok(f"{self.emulator_url}/_emulator/health"),
            timeout=30,
        )
        self._setup_databases()
        self._start_webhooks()
        self.daemon.start()
        self.webserver.start()
        self.instance = DagsterInstance.from_config(str(self.home))
        self.graphql = DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=30)
        try:
            self.wait_until_ready()
        except AssertionError as exc:
            tails = "\n".join(
                f"--- {s.name} (last lines) ---\n" + "\n".join(s.log_text().splitlines()[-30:])
                for s in (self.emulator, self.webhooks, self.daemon, self.webserver)
            )
            raise AssertionError(f"{exc}\n{tails}") from None
        self.startup_s = time.monotonic() - started

    def _setup_databases(self) -> None:
        """The README's set-up steps, as an operator runs them; the stand-in plays the platform,
        whose tables a real deployment finds already there."""
        stand_in = self.cli("db", "platform-stand-in")
        assert stand_in.returncode == 0, stand_in.stderr
        check = self.cli("db", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        upgrade = self.cli("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        migrate = self.run([str(BIN / "dagster"), "instance", "migrate"])
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    @property
    def webhooks_url(self) -> str:
        return self.env["ALIANZA_WEBHOOKS_URL"]

    def _start_webhooks(self) -> None:
        """The receiver, then the account's webhook pointed at it, as deploy/README.md says: the
        emulated Stream hands over the secret the receiver already has (configured to, as the
        real one answers with the account's)."""
        from alianza_jobs.emulators import StreamEmulator

        StreamEmulator(self.emulator_state_dir).configure(webhook_secret=self.webhook_secret)
        self.webhooks.start()
        wait_for(
            "the webhook receiver", lambda: _http_ok(f"{self.webhooks_url}/healthz"), timeout=30
        )
        registered = self.cli(
            "webhooks", "register", "--url", f"{self.webhooks_url}/stream/webhook"
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr

    def wait_until_ready(self, timeout: float = 120) -> None:
        wait_for("the webserver", lambda: _http_ok(f"{self.url}/server_info"), timeout=timeout)
        wait_for("every code location to load", self._locations_loaded, timeout=timeout)
        self.wait_for_daemon(timeout=timeout)

    def wait_for_daemon(self, *, since: float = 0.0, timeout: float = 120) -> None:
        """Until the scheduler, the run queue and run monitoring have each sent a heartbeat after
        ``since`` (a new daemon is up and doing its work)."""
        needed = ("SCHEDULER", "QUEUED_RUN_COORDINATOR", "MONITORING")

        def fresh() -> bool:
            beats = self.instance.get_daemon_heartbeats()
            return all(d in beats and beats[d].timestamp > since for d in needed)

        wait_for("the daemon's heartbeats", fresh, timeout=timeout)

    def restart_daemon_after_crash(self) -> float:
        """SIGKILL the daemon's main process, then start a new one. Returns the crash time."""
        self.daemon.kill_main_process()
        crashed = time.time()
        self.daemon.start()
        return crashed

    def stop(self) -> None:
        stop_all([self.webserver, self.daemon, self.webhooks, self.emulator])
        if hasattr(self, "instance"):
            self.instance.dispose()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for service in (self.webserver, self.daemon, self.webhooks, self.emulator):
            for n in range(1, service.starts + 1):
                log = service.log_dir / f"{service.name}.{n}.log"
                if log.exists():
                    shutil.copyfile(log, ARTIFACTS / log.name)

    # -- commands -------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run([str(BIN / "alianza-jobs"), *args], timeout=timeout)

    # -- Dagster, through GraphQL (as a client would) and its storage (as an operator would) ----

    @contextlib.contextmanager
    def sensor_stopped(self, name: str, location: str = "alianza_jobs") -> Iterator[None]:
        """The sensor off for the block, on again after it (as an operator would flip it)."""
        self.stop_sensor(name, location)
        try:
            yield
        finally:
            self.start_sensor(name, location)

    def start_sensor(self, name: str, location: str = "alianza_jobs") -> None:
        started = self.graphql_query(
            """
            mutation ($s: SensorSelector!) {
              startSensor(sensorSelector: $s) {
                __typename
                ... on Sensor { sensorState { status } }
              }
            }""",
            {"s": _sensor_selector(name, location)},
        )["startSensor"]
        assert started["sensorState"]["status"] == "RUNNING", started

    def stop_sensor(self, name: str, location: str = "alianza_jobs") -> None:
        """Turn a sensor off as an operator would in the UI (Automation -> the sensor -> off)."""
        found = self.graphql_query(
            """
            query ($s: SensorSelector!) {
              sensorOrError(sensorSelector: $s) {
                __typename
                ... on Sensor { jobOriginId sensorState { selectorId } }
              }
            }""",
            {"s": _sensor_selector(name, location)},
        )["sensorOrError"]
        assert found["__typename"] == "Sensor", found
        stopped = self.graphql_query(
            """
            mutation ($origin: String!, $selector: String!) {
              stopSensor(jobOriginId: $origin, jobSelectorId: $selector) {
                __typename
                ... on StopSensorMutationResult { instigationState { status } }
              }
            }""",
            {"origin": found["jobOriginId"], "selector": found["sensorState"]["selectorId"]},
        )["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped

    @contextlib.contextmanager
    def schedule_stopped(self, name: str, location: str = "alianza_jobs") -> Iterator[None]:
        """The schedule off for the block, on again after it (as an operator would flip it)."""
        self.stop_schedule(name, location)
        try:
            yield
        finally:
            self.start_schedule(name, location)

    def start_schedule(self, name: str, location: str = "alianza_jobs") -> None:
        started = self.graphql_query(
            """
            mutation ($s: ScheduleSelector!) {
              startSchedule(scheduleSelector: $s) {
                __typename
                ... on ScheduleStateResult { scheduleState { status } }
              }
            }""",
            {"s": _schedule_selector(name, location)},
        )["startSchedule"]
        assert started.get("scheduleState", {}).get("status") == "RUNNING", started

    def stop_schedule(self, name: str, location: str = "alianza_jobs") -> None:
        """Turn a schedule off as an operator would in the UI (Automation -> the schedule -> off)."""
        found = self.graphql_query(
            """
            query ($s: ScheduleSelector!) {
              scheduleOrError(scheduleSelector: $s) {
                __typename
                ... on Schedule { id }
              }
            }""",
            {"s": _schedule_selector(name, location)},
        )["scheduleOrError"]
        assert found["__typename"] == "Schedule", found
        stopped = self.graphql_query(
            """
            mutation ($id: String!) {
              stopRunningSchedule(id: $id) {
                __typename
                ... on ScheduleStateResult { scheduleState { status } }
              }
            }""",
            {"id": found["id"]},
        )["stopRunningSchedule"]
        assert stopped.get("scheduleState", {}).get("status") == "STOPPED", stopped

    def graphql_query(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def _locations_loaded(self) -> bool:
        data = self.graphql_query(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        errors = [
            f"{e['name']}: {e['locationOrLoadError'].get('message', '')}"
            for e in entries
            if e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "PythonError"
        ]
        assert not errors, f"code locations failed to load: {errors}"
        return len(entries) == self.locations and all(e["loadStatus"] == "LOADED" for e in entries)

    def definitions(self) -> dict[str, dict[str, Any]]:
        """Every job of the workspace: {name: {location, schedules: {name: cron}}}."""
        data = self.graphql_query(
            "{ repositoriesOrError { ... on RepositoryConnection { nodes { name "
            "location { name } jobs { name isAssetJob } "
            "schedules { name cronSchedule pipelineName } } } } }"
        )
        jobs: dict[str, dict[str, Any]] = {}
        for repo in data["repositoriesOrError"]["nodes"]:
            for job in repo["jobs"]:
                if job["name"].startswith("__"):
                    continue  # Dagster's implicit asset job
                jobs.setdefault(
                    job["name"],
                    {
                        "location": repo["location"]["name"],
                        "repository": repo["name"],
                        "schedules": {},
                    },
                )
            for schedule in repo["schedules"]:
                jobs[schedule["pipelineName"]]["schedules"][schedule["name"]] = schedule[
                    "cronSchedule"
                ]
        return jobs

    def launch(
        self,
        job_name: str,
        *,
        run_config: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        where = self.definitions()[job_name]
        return self.graphql.submit_job_execution(
            job_name,
            repository_location_name=where["location"],
            repository_name=where["repository"],
            run_config=run_config or {},
            tags=tags,
        )

    def wait_for_run(
        self, run_id: str, *, timeout: float, statuses: Sequence[DagsterRunStatus] = FINISHED
    ) -> DagsterRunStatus:
        def status() -> DagsterRunStatus | None:
            current = self.graphql.get_run_status(run_id)
            return current if current in statuses else None

        return wait_for(
            f"run {run_id} to reach {[s.value for s in statuses]}", status, timeout=timeout
        )

    def run_records(self, job_name: str) -> list[RunRecord]:
        return list(self.instance.get_run_records(RunsFilter(job_name=job_name)))

    def run_record(self, run_id: str) -> RunRecord:
        records = self.instance.get_run_records(RunsFilter(run_ids=[run_id]))
        assert records, f"no run {run_id}"
        return records[0]

    def dagster_sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dagster_db_url) as conn:
            return list(conn.execute(query, params).fetchall())

    def app_sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.app_db_url) as conn:
            return list(conn.execute(query, params).fetchall())

    def run_events(self, run_id: str) -> list[tuple[str | None, str]]:
        """(event type, message) of every event of the run, as stored in Postgres, in order."""
        rows = self.dagster_sql(
            "SELECT dagster_event_type, event FROM event_logs WHERE run_id = %s ORDER BY id",
            [run_id],
        )
        return [(kind, deserialize_value(body, EventLogEntry).message) for kind, body in rows]

    def ticks(self, schedule_name: str) -> list[dict[str, Any]]:
        """The schedule's ticks as stored in Postgres: status, timestamp, run ids, skip reason."""
        rows = self.dagster_sql("SELECT tick_body FROM job_ticks ORDER BY id")
        ticks = []
        for (body,) in rows:
            data = deserialize_value(body, TickData)
            if data.instigator_name != schedule_name:
                continue
            ticks.append(
                {
                    "status": data.status.value,
                    "timestamp": data.timestamp,
                    "run_ids": list(data.run_ids),
                    "skip_reason": data.skip_reason,
                }
            )
        return ticks


def _schedule_selector(name: str, location: str) -> dict[str, str]:
    return {**_repository_selector(location), "scheduleName": name}


def _sensor_selector(name: str, location: str) -> dict[str, str]:
    return {**_repository_selector(location), "sensorName": name}


def _repository_selector(location: str) -> dict[str, str]:
    # Definitions (not a @repository) load as Dagster's implicit "__repository__".
    return {"repositoryLocationName": location, "repositoryName": "__repository__"}


@dataclass
class AlertReceiver:
    """A Slack-compatible webhook on loopback (``ALERT_WEBHOOK_URL``) that keeps every alert it is
    posted, with the time it came, for the tests to read."""

    server: ThreadingHTTPServer
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls) -> AlertReceiver:
        receiver: AlertReceiver

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.received.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads the alerts; the requests need no log

        receiver = cls(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
        return receiver

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def alerts(self, **labels: str) -> list[tuple[float, dict[str, Any]]]:
        """(received at, payload) of every alert whose ``alianza`` labels include ``labels``."""
        with self.lock:
            return [
                (at, payload)
                for at, payload in self.received
                if labels.items() <= payload.get("alianza", {}).items()
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def iter_logs(deployment: Deployment) -> Iterator[tuple[str, str]]:
    for service in (deployment.emulator, deployment.daemon, deployment.webserver):
        yield service.name, service.log_text()
