"""The webhook receiver, SIGKILLed right after its Nth store commits and before it answers
(test-only wrapper):

    ALIANZA_TEST_RECEIVER_DIE_AFTER_STORE=3 python -m alianza_jobs_tests.reliability.receiver_crashsite --port N

runs exactly ``alianza-jobs webhooks serve`` with ``store_delivery`` wrapped: the delivery is on
disk, Stream has no answer, and retries.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from alianza_jobs.cli import cli
from alianza_jobs.defs.videos import webhook_receiver
from alianza_jobs_tests.reliability.hooks import die

_real_store = webhook_receiver.store_delivery
_stored = [0]


async def _store_then_die(*args: Any, **kwargs: Any) -> bool:
    stored = await _real_store(*args, **kwargs)
    _stored[0] += 1
    if _stored[0] == int(os.environ.get("ALIANZA_TEST_RECEIVER_DIE_AFTER_STORE", "0")):
        die(f"webhook store {_stored[0]} committed, before the answer")
    return stored


webhook_receiver.store_delivery = _store_then_die  # type: ignore[assignment]

if __name__ == "__main__":
    cli(["webhooks", "serve", *sys.argv[1:]], obj={})
