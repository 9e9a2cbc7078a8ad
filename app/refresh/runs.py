"""On-demand refresh runs: `POST /refresh` starts one, `GET /refresh/{run_id}` follows it.

A run refreshes its customers through the refresher, so it shares single flight with the
requests and the background refresh: a customer already being refreshed is joined, not
fetched twice. Runs are kept in memory, the newest `KEEP` of them; a restart forgets them
(the snapshots they wrote stay).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from app.clock import Clock, iso
from app.refresh.ledger import RefreshOutcome
from app.refresh.refresher import Refresher

KEEP = 200

CustomerState = Literal["pending", "running", "ok", "error"]


@dataclass
class Run:
    run_id: str
    started_at: datetime
    customer_ids: list[str]
    outcomes: dict[str, RefreshOutcome] = field(default_factory=dict)
    finished_at: datetime | None = None
    task: asyncio.Task[None] | None = None

    @property
    def state(self) -> Literal["running", "done"]:
        return "done" if self.finished_at is not None else "running"


class RefreshRuns:
    def __init__(
        self,
        refresher: Refresher,
        clock: Clock,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]] = asyncio.create_task,
    ) -> None:
        self.refresher = refresher
        self.clock = clock
        self.spawn = spawn
        self._runs: OrderedDict[str, Run] = OrderedDict()

    def start(self, customer_ids: Sequence[str]) -> Run:
        run = Run(uuid.uuid4().hex, self.clock(), list(dict.fromkeys(customer_ids)))
        self._runs[run.run_id] = run
        while len(self._runs) > KEEP:
            self._runs.popitem(last=False)
        run.task = self.spawn(self._go(run))
        return run

    async def _go(self, run: Run) -> None:
        async def one(cid: str) -> None:
            run.outcomes[cid] = await self.refresher.refresh(cid)

        try:
            await asyncio.gather(*(one(cid) for cid in run.customer_ids))
        finally:
            run.finished_at = self.clock()

    def get(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def out(self, run: Run) -> dict[str, Any]:
        """A run as `GET /refresh/{run_id}` shows it."""
        customers = []
        for cid in run.customer_ids:
            outcome = run.outcomes.get(cid)
            state: CustomerState
            if outcome is not None:
                state = "ok" if outcome.ok else "error"
            elif cid in self.refresher.walking:
                state = "running"
            else:
                state = "pending"
            error = outcome.error if outcome is not None else None
            customers.append(
                {
                    "customer_id": cid,
                    "state": state,
                    "jobs": outcome.jobs if outcome is not None and outcome.ok else None,
                    "error": None
                    if error is None
                    else {
                        "kind": error.kind,
                        "message": error.message,
                        "upstream_status": error.upstream_status,
                    },
                }
            )
        return {
            "run_id": run.run_id,
            "state": run.state,
            "started_at": iso(run.started_at),
            "finished_at": iso(run.finished_at),
            "customers": customers,
        }
