"""How stale a table may get before it alerts, derived from the cron of the job that maintains it.

A table is fresh while its last update is recent enough for its job's schedule. An update is a
materialization: the end of a successful run, or a queue's schedule tick that found nothing due
(``platform.schedules`` reports one, so a quiet queue stays fresh without a run). Dagster's
freshness daemon evaluates each table's ``FreshnessPolicy`` every 30 s, launching no run, and
records each change of state; ``defs/alerts/freshness.py`` turns those into one alert per stale
streak. docs/alerts.md, "Stale tables", has the windows and the reasons for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import TypeVar

from dagster import AssetKey, AssetsDefinition, AssetSpec, FreshnessPolicy
from dagster._utils.schedules import cron_string_iterator, get_smallest_cron_interval
from dagster._vendored.croniter.croniter import croniter

from alianza_jobs.platform.tags import META_FRESHNESS, META_MAINTAINED_BY
from alianza_jobs.platform.task import TaskSpec
from alianza_jobs.settings import (
    FRESHNESS_OVERRIDE_PREFIX,
    FRESHNESS_OVERRIDE_SUFFIX,
    Settings,
    SettingsError,
)

# The daemons are not punctual: the scheduler fires a tick seconds late on a loaded host (tens of
# seconds when the code server is busy), and a run may wait in the queue a moment before it
# starts. A minute on top of every window absorbs both; the freshness daemon's 30 s between
# evaluations only delays an alert, it never brings one early.
SLACK = timedelta(minutes=1)
DAY_MINUTES = 24 * 60
# Where the walk over a day-restricted cron's firing days starts (any fixed date works: the result
# must not depend on when the code location loads), how far it goes, and how many days it reads.
# Eight years cover every weekday/leap-year pattern but the rarest (a 29 February on a Monday).
_WALK_FROM = datetime(2025, 1, 1, tzinfo=UTC)
_WALK_YEARS = 8
_WALK_MAX_DAYS = 3000

Asset = TypeVar("Asset", AssetSpec, AssetsDefinition)


@dataclass(frozen=True)
class Freshness:
    """A table's policy and, in words, where its window comes from (the UI and the alerts say it)."""

    policy: FreshnessPolicy
    why: str


def freshness_policy(spec: TaskSpec, cron: str) -> FreshnessPolicy:
    """The policy for a table that ``spec``'s job, on ``cron``, keeps current."""
    return derive(spec, cron).policy


def derive(spec: TaskSpec, cron: str) -> Freshness:
    """A queue's table (a task with a backlog probe) is updated whenever work comes, by its ticks
    and by the runs its work sensor launches, and a run may outlast the next tick (which then
    skips): what matters is how long since the last update, a time window. A batch task's table
    (no probe: the daily report) is due by a time: a deadline after each tick, when its longest run
    fits between two ticks (else a time window as well).

    Time window: the longest gap between two ticks, plus the job's longest run
    (``spec.max_runtime``: every attempt timing out, every retry delay at its longest, start-up),
    plus :data:`SLACK`, rounded up to a minute: the latest a healthy job's next update can come
    after its previous one (a run that ended at once, then a tick after the longest gap whose run
    took as long as it may). Deadline: ``cron`` moved later by the longest run plus the slack,
    rounded up to a minute; the window it judges opens at the tick itself, so the tick's run counts.
    """
    runtime = spec.max_runtime
    offset = _whole_minutes(runtime + SLACK)
    deadline = shifted_cron(cron, offset) if spec.backlog is None else None
    if deadline is not None and offset <= shortest_gap(deadline):
        return Freshness(
            FreshnessPolicy.cron(deadline_cron=deadline, lower_bound_delta=offset, timezone="UTC"),
            f"each tick of `{cron}` (UTC) must have updated it by {describe(offset)} later "
            f"(deadline `{deadline}`): {spec.name}'s longest run ({describe(runtime)}) + "
            f"{describe(SLACK)} slack",
        )
    gap = longest_gap(cron)
    window = _whole_minutes(gap + runtime + SLACK)
    return Freshness(
        FreshnessPolicy.time_window(fail_window=window),
        f"stale {describe(window)} after its last update: the longest gap between ticks of "
        f"`{cron}` ({describe(gap)}) + {spec.name}'s longest run ({describe(runtime)}) + "
        f"{describe(SLACK)} slack",
    )


def table_freshness(spec: TaskSpec, settings: Settings, table: str) -> Freshness:
    """``table``'s freshness: its ``ALIANZA_FRESHNESS_<TABLE>_SECONDS`` window if set, else the
    one derived from its job's cron for this environment (``spec.cron_for``: overrides included)."""
    seconds = settings.freshness_overrides.get(table)
    if seconds is not None:
        window = timedelta(seconds=seconds)
        return Freshness(
            FreshnessPolicy.time_window(fail_window=window),
            f"stale {describe(window)} after its last update "
            f"({override_variable(table)}={seconds})",
        )
    cron = spec.cron_for(settings)
    if cron is None:
        raise ValueError(f"{spec.name} is manual-only: no cron to derive {table}'s freshness from")
    return derive(spec, cron)


def with_freshness(asset: Asset, spec: TaskSpec, settings: Settings) -> Asset:
    """``asset`` (a table's ``AssetSpec``, or an asset definition) with the freshness policy its
    job's cron gives it, and the job's name and the window's reason in its metadata."""

    def attach(asset_spec: AssetSpec) -> AssetSpec:
        fresh = table_freshness(spec, settings, asset_spec.key.to_user_string())
        return asset_spec.replace_attributes(freshness_policy=fresh.policy).merge_attributes(
            metadata={META_MAINTAINED_BY: spec.name, META_FRESHNESS: fresh.why}
        )

    if isinstance(asset, AssetSpec):
        return attach(asset)
    return asset.map_asset_specs(attach)


def fresh_tables(assets: Iterable[object]) -> dict[AssetKey, AssetSpec]:
    """The assets among ``assets`` (``AssetSpec``s, asset definitions) that have a freshness
    policy, by key: the tables the freshness alerts watch."""
    found: dict[AssetKey, AssetSpec] = {}
    for asset in assets:
        specs = [asset] if isinstance(asset, AssetSpec) else getattr(asset, "specs", [])
        found.update({s.key: s for s in specs if s.freshness_policy is not None})
    return found


def check_freshness_overrides(settings: Settings, tables: Iterable[str]) -> None:
    """An ``ALIANZA_FRESHNESS_<TABLE>_SECONDS`` naming no table with a policy would silently change
    nothing: fail the load instead, naming the tables it may name."""
    known = set(tables)
    for table, seconds in settings.freshness_overrides.items():
        if table not in known:
            raise SettingsError(
                f"{override_variable(table)}={seconds!r} names no table with a freshness policy "
                f"(tables: {', '.join(sorted(known))})"
            )


def override_variable(table: str) -> str:
    return f"{FRESHNESS_OVERRIDE_PREFIX}{table.upper()}{FRESHNESS_OVERRIDE_SUFFIX}"


# -- cron arithmetic (UTC, as every schedule of ours runs) ----------------------------------------


def longest_gap(cron: str) -> timedelta:
    """The longest wait from one tick of ``cron`` to the next."""
    times, days = _times_of_day(cron)
    within_day = max((b - a for a, b in pairwise(times)), default=0)
    if days is None:  # it fires every day: the only other gap is across midnight
        return timedelta(minutes=max(within_day, DAY_MINUTES - times[-1] + times[0]))
    # Some days only: walk its firing days (one tick a day, at the day's first time) from a fixed
    # date. The longest gap is within a day, or from a firing day's last tick to the next one's first.
    first_ticks = cron_string_iterator(
        start_timestamp=_WALK_FROM.timestamp(),
        cron_string=f"{times[0] % 60} {times[0] // 60} {days}",
        execution_timezone="UTC",
    )
    until = _WALK_FROM.replace(year=_WALK_FROM.year + _WALK_YEARS)
    firing: list[datetime] = []
    for tick in first_ticks:
        if tick > until or len(firing) == _WALK_MAX_DAYS:
            break
        firing.append(tick)
    if len(firing) < 2:  # fires once in eight years, or never: as good as never
        return until - _WALK_FROM
    span = timedelta(minutes=times[-1] - times[0])
    across_days = max(b - a for a, b in pairwise(firing)) - span
    return max(timedelta(minutes=within_day), across_days)


def shortest_gap(cron: str) -> timedelta:
    """The shortest wait from one tick of ``cron`` to the next."""
    times, days = _times_of_day(cron)
    if days is None:  # daily: read off the times, rather than sampling a thousand ticks
        wrap = DAY_MINUTES - times[-1] + times[0]
        return timedelta(minutes=min([b - a for a, b in pairwise(times)] + [wrap]))
    return get_smallest_cron_interval(cron, "UTC")


def shifted_cron(cron: str, offset: timedelta) -> str | None:
    """``cron`` with every tick ``offset`` (whole minutes) later, or None when no plain cron says
    that: the moved times are not every pairing of a set of minutes and a set of hours, or a tick
    of a cron that fires on some days only would move into the next day."""
    times, days = _times_of_day(cron)
    moved = [t + int(offset.total_seconds() // 60) for t in times]
    if days is not None and any(t >= DAY_MINUTES for t in moved):
        return None
    moved_set = {t % DAY_MINUTES for t in moved}
    minutes = sorted({t % 60 for t in moved_set})
    hours = sorted({t // 60 for t in moved_set})
    if len(moved_set) != len(minutes) * len(hours):
        return None
    minute_field = "*" if len(minutes) == 60 else _cron_list(minutes)
    hour_field = "*" if len(hours) == 24 else _cron_list(hours)
    return f"{minute_field} {hour_field} {days or '* * *'}"


def describe(value: timedelta) -> str:
    """A duration as people write it: ``90 s``, ``9 min``, ``7 min 20 s``, ``2 h 4 min``, ``3 days``."""
    seconds = round(value.total_seconds())
    if seconds < 120 and seconds % 60:
        return f"{seconds} s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    parts = [f"{days} day{'s' if days != 1 else ''}"] if days else []
    parts += [f"{n} {unit}" for n, unit in ((hours, "h"), (minutes, "min"), (rest, "s")) if n]
    return " ".join(parts)


def _times_of_day(cron: str) -> tuple[list[int], str | None]:
    """The minutes after midnight at which ``cron`` fires, sorted, and its day fields (day of
    month, month, day of week) as written, or None when they are all ``*`` (it fires daily)."""
    # Dagster's own cron parser (what its schedules run on): every field as a list, or ["*"].
    expanded, _nth_weekday = croniter.expand(cron)  # type: ignore[no-untyped-call]
    minute_field, hour_field, *day_fields = expanded
    minutes = range(60) if minute_field == ["*"] else [int(m) for m in minute_field]
    hours = range(24) if hour_field == ["*"] else [int(h) for h in hour_field]
    times = sorted(h * 60 + m for h in hours for m in minutes)
    if all(field == ["*"] for field in day_fields):
        return times, None
    fields = cron.split()
    # An alias (@weekly) has no fields to copy; its expansion is plain numbers.
    days = " ".join(fields[2:5]) if len(fields) == 5 else " ".join(map(_cron_list, day_fields))
    return times, days


def _cron_list(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


def _whole_minutes(value: timedelta) -> timedelta:
    return timedelta(minutes=math.ceil(value.total_seconds() / 60))
