"""One loopback server for many isolated emulator states (the suite's stand-in for the real APIs).

``/{namespace}/...`` is served by the project's own emulators (:func:`combined_app`, the app
``alianza-jobs emulate`` serves) on the state directory ``<root>/<namespace>``: Stream under
``/{namespace}/client/v4``, Resend at ``/{namespace}``. Each test gets a namespace of its own, so
their videos, inboxes, faults and counters never mix, while the suite starts one server instead of
one per test. Real HTTP over loopback: client timeouts, dropped connections and a send that goes on
after its client was killed all behave as they do against the real services.

    python -m alianza_jobs_tests.reliability.emulator_server --port 8799 --root /tmp/emulators
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from alianza_jobs.emulators import combined_app
from alianza_jobs.emulators.faults import EmulatedConnectionReset

NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class Namespaces:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.apps: dict[str, Starlette] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        name = str(scope["path"]).lstrip("/").split("/", 1)[0]
        if not NAMESPACE.match(name):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no such namespace"})
            return
        app = self.apps.get(name)
        if app is None:
            # Building the app opens nothing; its state is opened on the first request.
            app = self.apps[name] = combined_app(self.root / name)
        # Starlette routes on the path below root_path, exactly as under a Mount.
        await app({**scope, "root_path": f"{scope.get('root_path', '')}/{name}"}, receive, send)


class _QuietInjectedResets(logging.Filter):
    """An injected connection reset is the fault working, not a server bug worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, EmulatedConnectionReset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(
        Namespaces(args.root),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        # Killed clients leave connections behind; shutting down must not wait for them.
        timeout_graceful_shutdown=1,
    )
    logging.getLogger("uvicorn.error").addFilter(_QuietInjectedResets())
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
