"""The HTTP server: uvicorn, with a clean stop on SIGTERM.

On SIGTERM `/readyz` turns 503 at once and long polls answer; uvicorn stops accepting, lets
the requests in flight finish (at most `STOP_GRACE_SECONDS`), then runs the lifespan's
shutdown: refreshes in flight are cancelled (a commit under way finishes, anything else
rolls back), leases are handed back, and the process exits 0. uvicorn alone re-raises the
signal once stopped, which ends the process with -15 as if it had been killed; SIGINT
(Ctrl-C) keeps that behaviour.
"""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

STOP_GRACE_SECONDS = 6
"""How long requests in flight get after SIGTERM: with the lifespan's shutdown after them,
the stop stays within the 10 s an orchestrator gives before it sends SIGKILL."""


class StoppingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = getattr(self.app.state, "services", None)
        if services is not None:
            services.stop()
        if sig == signal.SIGTERM:
            self.should_exit = True  # asked to stop: a clean stop is a success
            return
        super().handle_exit(sig, frame)
