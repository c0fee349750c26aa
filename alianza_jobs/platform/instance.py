"""Where the Dagster instance lives for the CLI and ``make dev``: a stable ``DAGSTER_HOME``.

``dagster dev`` without ``DAGSTER_HOME`` keeps history in a temporary directory that disappears on
exit; we want the UI, the CLI and the daemon to share one history, so everything defaults to
``.alianza/dagster_home`` with the repository's ``dagster.yaml`` in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dagster import DagsterInstance

from alianza_jobs.settings import pin_dagster_home

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def ensure_dagster_home() -> Path:
    home = pin_dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and REPO_DAGSTER_YAML.exists():
        shutil.copyfile(REPO_DAGSTER_YAML, config)
    return home


def get_instance() -> DagsterInstance:
    ensure_dagster_home()
    return DagsterInstance.get()
