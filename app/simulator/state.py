"""`Simulator`: one simulated upstream's data, tokens, counters and fault state.

The HTTP app (`app.simulator.app`) is a thin shell over this object; tests hold the same
object to read what the upstream holds (`customers()`, `jobs()`), what it was asked
(`stats`), to move its clock, and to change its fault knobs mid-test by assigning a new
`config` (`dataclasses.replace(sim.config, failing_customers=...)`).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from app.clock import to_second
from app.simulator.data import (
    Customer,
    History,
    SimulatorConfig,
    build_customers,
    customer_job_status,
    customer_wire,
    scripted_row,
    seeded_rng,
    with_odd_text,
)
from app.simulator.faults import (
    ENDPOINT_JOBS,
    MALFORMED_ORDER,
    Fault,
    Malformed,
    SimulatorStats,
)

DEFAULT_SCOPE = "elements.jobs.read.all elements.customers.read.all"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Simulator:
    """The simulated AvePoint upstream. Nothing is generated until first asked for."""

    def __init__(
        self, config: SimulatorConfig | None = None, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.clock = clock
        self.stats = SimulatorStats()
        self._tokens: dict[str, datetime] = {}
        self._dice = seeded_rng(f"{self.config.seed}:faults")
        self._jobs_seen = 0
        self._malformed_seen: Counter[str] = Counter()
        self._customers_key: tuple[int, int] | None = None
        self._customers: dict[str, Customer] = {}
        self._histories: dict[str, History] = {}
        # The rows last built per customer, with what they were built for: a walk's pages
        # arrive within a second and share one build.
        self._rows: dict[
            str, tuple[tuple[int | None, int, datetime, bool, int], list[dict[str, Any]]]
        ] = {}
        # Rows tests put in place, per customer and job id, listed after the generated ones.
        self._scripted: dict[str, dict[str, dict[str, Any]]] = {}
        self._script_version = 0

    # --- data -------------------------------------------------------------------------

    def now(self) -> datetime:
        """The simulator's clock, as aware UTC to the second (the wire's resolution)."""
        return to_second(self.clock())

    def _customer_table(self) -> dict[str, Customer]:
        key = (self.config.seed, self.config.customers)
        if self._customers_key != key:
            self._customers = {c.id: c for c in build_customers(self.config)}
            self._histories = {c.id: History(c) for c in self._customers.values()}
            self._customers_key = key
            self._rows.clear()
        return self._customers

    def customer_ids(self) -> list[str]:
        """Every customer id, in the customers endpoint's order."""
        return list(self._customer_table())

    def customers(self) -> list[dict[str, Any]]:
        """Every customer as the customers endpoint sends it, `jobStatus` as of the clock."""
        now = self.now()
        return [
            customer_wire(c, customer_job_status(self.rows(c.id, now)))
            for c in self._customer_table().values()
        ]

    def jobs(self, customer_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every job row of the customer at `now` (default: the clock), in upstream order.

        Raises KeyError for an unknown customer id.
        """
        return [dict(row) for row in self.rows(customer_id, now)]

    def rows(self, customer_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
        """Like `jobs`, but the shared, cached rows: read them, never change them."""
        self._customer_table()  # (re)built for the current config
        history = self._histories[customer_id]
        moment = self.now() if now is None else to_second(now)
        odd = customer_id in self.config.odd_text_customers
        key = (
            self.config.jobs_per_customer,
            self.config.history_days,
            moment,
            odd,
            self._script_version,
        )
        cached = self._rows.get(customer_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        rows = history.rows(self.config, moment)
        scripted = self._scripted.get(customer_id)
        if scripted:
            rows = [*rows, *scripted.values()]
        if odd:
            rows = with_odd_text(rows)
        self._rows[customer_id] = (key, rows)
        return rows

    def put_job(
        self,
        customer_id: str,
        job_id: str,
        *,
        status: int,
        start: datetime,
        job_type: int = 7,
        module: int = 304,
        name: str = "Scripted backup",
        duration: int = 600,
    ) -> dict[str, Any]:
        """List a job of the test's making for the customer (or change it, by job id), after
        the generated ones; with `SimulatorConfig(jobs_per_customer=0)` only these are listed.
        Status codes are the upstream's: 1 running, 2 finished, 3 failed, ..."""
        if not self.is_customer(customer_id):
            raise KeyError(customer_id)
        row = scripted_row(
            job_id=job_id,
            status=status,
            start=start,
            job_type=job_type,
            module=module,
            name=name,
            duration=duration,
        )
        self._scripted.setdefault(customer_id, {})[job_id] = row
        self._script_version += 1
        return row

    def remove_job(self, customer_id: str, job_id: str) -> None:
        """Stop listing a job `put_job` listed."""
        self._scripted.get(customer_id, {}).pop(job_id, None)
        self._script_version += 1

    def is_customer(self, customer_id: str) -> bool:
        return customer_id in self._customer_table()

    # --- tokens -----------------------------------------------------------------------

    def issue_token(self, client_id: str | None, client_secret: str | None) -> str | None:
        """A new opaque token for the configured credentials; None for any others."""
        if not (
            client_id is not None
            and client_secret is not None
            and secrets.compare_digest(client_id, self.config.client_id)
            and secrets.compare_digest(client_secret, self.config.client_secret)
        ):
            return None
        token = secrets.token_urlsafe(32)
        self._tokens[token] = self.now()
        return token

    def token_is_valid(self, token: str) -> bool:
        issued = self._tokens.get(token)
        if issued is None:
            return False
        return self.now() - issued < timedelta(seconds=self.config.token_ttl_seconds)

    def expire_tokens(self) -> None:
        """Forget every token, as an identity server's key rotation would."""
        self._tokens.clear()

    # --- faults -----------------------------------------------------------------------

    def gateway_fault(self, endpoint: str) -> Fault | None:
        """The fault an authenticated API request meets before its parameters are read.

        Every jobs request counts towards `rate_limit_every`; `error_rate` applies to the
        customers and jobs endpoints alike.
        """
        if endpoint == ENDPOINT_JOBS:
            self._jobs_seen += 1
            every = self.config.rate_limit_every
            if every > 0 and self._jobs_seen % every == 0:
                return Fault.RATE_LIMITED
        if self.roll_unavailable():
            return Fault.UNAVAILABLE
        return None

    def customer_fault(self, customer_id: str) -> Fault | None:
        """The fault a valid jobs request for this customer meets, if any.

        Checked before the id is looked up, so any id (known or not) can be made to fail.
        """
        config = self.config
        if customer_id in config.forbidden_customers:
            return Fault.FORBIDDEN
        if customer_id in config.failing_customers:
            return Fault.SERVER_ERROR
        if customer_id in config.malformed_customers:
            return Fault.MALFORMED
        return None

    def roll_unavailable(self) -> bool:
        """One draw of the `error_rate` dice (seeded, so a run's failures repeat)."""
        rate = self.config.error_rate
        return rate > 0 and self._dice.random() < rate

    def next_malformed(self, customer_id: str) -> Malformed:
        """The kind of broken page to answer next: each kind in turn, per customer."""
        kind = MALFORMED_ORDER[self._malformed_seen[customer_id] % len(MALFORMED_ORDER)]
        self._malformed_seen[customer_id] += 1
        return kind
