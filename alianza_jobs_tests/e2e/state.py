"""Where the suite's test jobs and the tests exchange files: ``ALIANZA_E2E_STATE_DIR``.

Every run is its own process, started by the daemon with the deployment's environment; the test
reads what a run wrote (and releases a run) through files in this directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    root = Path(os.environ["ALIANZA_E2E_STATE_DIR"])
    root.mkdir(parents=True, exist_ok=True)
    return root
