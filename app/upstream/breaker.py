"""The upstream circuit breaker: when AvePoint fails for everyone, stop asking for a while.

Retries ride out a failing request; they cannot help when the upstream is down for every
customer, where they only multiply the load on it and make every refresh wait. The
breaker watches the outcome of every upstream attempt and, once the upstream looks down
rather than unlucky for one customer, refuses requests at once (the refresher then serves
the last good data as stale) until it is time to try again::

              5 consecutive failures              the open time has passed:
              spanning >= 2 customers             the next request is the probe
    CLOSED ───────────────────────────▶ OPEN ─────────────────────────────▶ HALF-OPEN
      ▲                                   ▲                                     │
      │                                   └──── the probe failed: open again ───┤
      │                                         for twice as long (at most      │
      │                                         `max_open_seconds`)             │
      └──────────────────────────── the probe succeeded ────────────────────────┘

- Closed: every attempt goes. A failure (the client decides what counts: 5xx, timeouts,
  connection errors, also of the token endpoint; never 4xx such as 403/404 or 429) adds
  to a run of consecutive failures and names its customer; any success ends the run. The
  breaker opens when the run is `threshold` long and spans at least `min_customers`
  customers; `EVERYONE` (a token-endpoint failure: no customer can be served without a
  token) spans them all. One customer failing alone never opens it, however often.
- Open for `open_seconds`; every attempt is refused (`admit` answers None).
- Half-open: one attempt, the probe, goes; the others are refused while it runs. Its
  success closes the breaker; its failure opens it again, each time for twice as long, at
  most `max_open_seconds`. A probe that ends neither way (a 404, a 429, cancelled) just
  hands the probe on to the next attempt.

Each attempt holds a `Permit` and settles it once: `succeeded`, `failed` or `released`
(neither: a 4xx, a cancellation; a settled permit ignores the rest, so a `finally:
released(permit)` is always safe). A permit from before the latest change of state is
ignored: requests sent before the breaker opened do not count once it has.

Time is the injected `clock` (monotonic seconds); nothing here sleeps or holds a lock, as
the event loop runs one task at a time. Changes of state are made as attempts arrive (an
open breaker turns half-open at the first `admit` after its time) and reported to
`on_state`; each refusal to `on_refused`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Literal

logger = logging.getLogger("app.upstream")

BreakerState = Literal["closed", "open", "half_open"]

EVERYONE: Final = object()
"""The customer of a failure that fails them all (a token-endpoint failure)."""


@dataclass(eq=False)
class Permit:
    """Leave for one attempt; `probe` when it is the half-open breaker's one trial."""

    generation: int
    probe: bool = False
    settled: bool = False


class CircuitBreaker:
    """Counts upstream failures across customers and refuses requests while it is open."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        min_customers: int = 2,
        open_seconds: float = 30.0,
        max_open_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[BreakerState], None] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        if threshold < 1 or min_customers < 1:
            raise ValueError("threshold and min_customers must be at least 1")
        if not 0 < open_seconds <= max_open_seconds:
            raise ValueError("open_seconds must be positive and at most max_open_seconds")
        self.threshold = threshold
        self.min_customers = min_customers
        self.open_seconds = open_seconds
        self.max_open_seconds = max_open_seconds
        self._clock = clock
        self._on_state = on_state
        self._on_refused = on_refused
        self._state: BreakerState = "closed"
        # Grows with every change of state; permits of an older one are ignored.
        self._generation = 0
        self._run = 0  # consecutive failures (closed)
        self._customers: set[Hashable] = set()  # ... and whose they were
        self._failed_probes = 0  # since the breaker last opened from closed
        self._open_until = 0.0
        self._probe_out = False
        self.last_failure: str | None = None
        """What the newest counted failure was, in words, to tell why the breaker is open."""
        self.last_status: int | None = None
        """... and the HTTP status it came with, if any."""
        if on_state is not None:
            on_state(self._state)

    @property
    def state(self) -> BreakerState:
        """The state as of now: an open breaker whose time is up reads half-open."""
        if self._state == "open" and self._clock() >= self._open_until:
            return "half_open"
        return self._state

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe go (0 when closed or half-open)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def admit(self) -> Permit | None:
        """A permit for one attempt, or None: refused, do not send it."""
        if self._state == "open" and self._clock() >= self._open_until:
            self._enter("half_open")
            logger.info("AvePoint circuit breaker half-open: the next request is a probe")
        if self._state == "closed":
            return Permit(self._generation)
        if self._state == "half_open" and not self._probe_out:
            self._probe_out = True
            return Permit(self._generation, probe=True)
        if self._on_refused is not None:
            self._on_refused()
        return None

    def succeeded(self, permit: Permit) -> None:
        """The attempt got an answer that shows the upstream works: ends a run, closes."""
        if not self._settle(permit):
            return
        self._run = 0
        self._customers.clear()
        if self._state == "half_open":
            self._failed_probes = 0
            self._enter("closed")
            logger.info("AvePoint circuit breaker closed: the probe request succeeded")

    def failed(
        self,
        permit: Permit,
        customer: Hashable,
        reason: str | None = None,
        status: int | None = None,
    ) -> None:
        """The attempt failed in a way that counts; `customer` is whose request it was (or
        `EVERYONE`); `reason` (words without secrets) and `status` tell why it opened."""
        if not self._settle(permit):
            return
        self.last_failure = reason
        self.last_status = status
        if self._state == "half_open":
            self._failed_probes += 1
            self._open()
            return
        self._run += 1
        self._customers.add(customer)
        spans = EVERYONE in self._customers or len(self._customers) >= self.min_customers
        if self._run >= self.threshold and spans:
            self._failed_probes = 0
            self._open()

    def released(self, permit: Permit) -> None:
        """The attempt ended neither way (a 4xx, a cancellation): nothing counted."""
        if self._settle(permit) and permit.probe:
            self._probe_out = False

    # -- inside -------------------------------------------------------------------------

    def _settle(self, permit: Permit) -> bool:
        """Mark the permit used; whether its outcome still counts."""
        if permit.settled:
            return False
        permit.settled = True
        return permit.generation == self._generation

    def _open(self) -> None:
        doubled = self.open_seconds * 2.0 ** min(self._failed_probes, 30)
        seconds = min(doubled, self.max_open_seconds)
        self._open_until = self._clock() + seconds
        self._enter("open")
        logger.warning(
            "AvePoint circuit breaker open for %gs: the upstream is failing across customers "
            "(the last failure: %s)",
            seconds,
            self.last_failure or "unknown",
        )

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self._generation += 1
        self._run = 0
        self._customers.clear()
        self._probe_out = False
        if self._on_state is not None:
            self._on_state(state)
