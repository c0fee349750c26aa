"""The shape every asset of ours shares: the tables the jobs maintain, the services they depend on.

The tables are plain ``AssetSpec``s (Dagster's external assets): the queue jobs are ops, not asset
computations, and report a materialization of each table they wrote at the end of a run (see
``TaskSpec(assets=...)``), so a table's page in the UI plots its job's counters over time.
"""

from __future__ import annotations

from dagster import AssetSpec

from alianza_jobs.platform.tags import OWNER

TABLE_GROUP = "app_tables"
SERVICE_GROUP = "services"


def table(name: str, description: str) -> AssetSpec:
    return AssetSpec(
        name, description=description, group_name=TABLE_GROUP, owners=[OWNER], kinds={"table"}
    )


def service(name: str, description: str) -> AssetSpec:
    return AssetSpec(name, description=description, group_name=SERVICE_GROUP, owners=[OWNER])
