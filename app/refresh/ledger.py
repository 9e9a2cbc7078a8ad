"""What this process knows of every customer's data, in memory: how current it is.

The database is the durable copy (snapshots, `customers.data_version`); the ledger is read
from it at start-up and after other processes' writes (`take_state`), and moved by this
process's own refreshes (`settle`). Answering "how current is this" costs no query:

- a customer's data is `fresh` for `CACHE_TTL_SECONDS` after its last good snapshot;
- older data is `stale`, and so is data whose newest refresh failed (served while younger
  than `STALE_IF_ERROR_SECONDS`);
- a customer with nothing to serve is `error`.

Each customer has a data version (the database's, so every process agrees on it) and the
ledger a fingerprint of them all; the API keys its encoded answers, and their ETags, by them.
`epoch` grows with every change of any customer's state or name, so views, and answers built
from them, can be kept until it moves.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from app.clock import iso, to_second
from app.store import repo

State = Literal["fresh", "stale", "refreshing", "error"]
STATES: tuple[State, ...] = ("fresh", "stale", "refreshing", "error")
CacheResult = Literal["hit", "miss", "stale"]

# First backoff after a failure; it doubles per consecutive failure, capped at the TTL, but
# even with CACHE_TTL_SECONDS=0 a failing upstream is not asked by every request.
BACKOFF_BASE_SECONDS = 10.0
MIN_BACKOFF_SECONDS = 1.0

KEPT_VIEWS = 256
"""Views of named sets of customers kept at one epoch (one a key limited to some customers)."""


@dataclass(frozen=True, slots=True)
class SourceError:
    kind: str
    message: str
    upstream_status: int | None


NOT_FETCHED = SourceError("not_fetched", "no snapshot of this customer yet", None)


@dataclass(frozen=True, slots=True)
class Source:
    """How current one customer's part of an answer is."""

    customer_id: str
    state: State
    fetched_at: datetime | None
    age_seconds: int | None
    error: SourceError | None


@dataclass(slots=True)
class CustomerStatus:
    """What the process knows of one customer (in memory; snapshots are the durable copy)."""

    customer_id: str
    name: str | None = None
    last_success_at: datetime | None = None
    error: SourceError | None = None  # the newest attempt failed (after the last success)
    version: int = 0  # grows when a refresh changed the customer's data
    failures: int = 0
    backoff_until: datetime | None = None
    due_at: datetime | None = None  # when the background refresh takes it next


@dataclass(frozen=True, slots=True)
class Part:
    """One customer in a view: its state, when its data was fetched, why it is not fresh."""

    customer_id: str
    state: State
    fetched_at: datetime | None
    error: SourceError | None


@dataclass(frozen=True)
class View:
    """How current a set of customers is at one moment; valid until `valid_until` or until a
    customer's state changes (the ledger's epoch), whichever comes first."""

    customers: int
    counts: dict[State, int]
    oldest_fetched_at: datetime | None
    not_fresh: tuple[Part, ...]
    errors: frozenset[str]  # customers with nothing to serve
    valid_until: datetime | None
    tag: str  # what the answer's ETag covers of it

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "customers": self.customers,
            **{state: self.counts[state] for state in STATES},
            "oldest_fetched_at": iso(self.oldest_fetched_at),
        }


@dataclass(frozen=True)
class Freshness:
    """How current one answer is: the view of its customers, and what the request did."""

    view: View
    now: datetime
    ttl: float
    forwarded: bool = False  # the request waited on at least one refresh
    stored: bool = False  # ... and at least one of them stored new data
    upstream_status: int | None = None  # the status of a refresh that failed, if any did

    @property
    def sources(self) -> list[Source]:
        """Every customer whose part is not fresh (an empty list: complete and fresh)."""
        return [
            Source(
                p.customer_id,
                p.state,
                to_second(p.fetched_at) if p.fetched_at else None,
                age_seconds(self.now, p.fetched_at),
                p.error,
            )
            for p in self.view.not_fresh
        ]

    @property
    def errors(self) -> frozenset[str]:
        return self.view.errors

    @property
    def ttl_left(self) -> int | None:
        """Seconds until the oldest data served stops being fresh (negative: stale since)."""
        age = age_seconds(self.now, self.view.oldest_fetched_at)
        return None if age is None else int(self.ttl) - age


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    customer_id: str
    ok: bool
    jobs: int = 0
    pages: int = 0
    rows_skipped: int = 0
    written: int = 0
    error: SourceError | None = None
    stored_at: datetime | None = None
    data_version: int | None = None


class Ledger:
    """Every customer's status, the views built on them, and the data versions."""

    def __init__(self, *, ttl: float, stale_if_error: float, interval: float) -> None:
        self.ttl = ttl
        self.stale_if_error = stale_if_error
        self.interval = interval
        self.status: dict[str, CustomerStatus] = {}
        self.epoch = 0  # grows with every change of any customer's state
        self._fingerprint: str | None = None
        self._view_all: tuple[int, int, View] | None = None  # (epoch, scope size, view)
        self._kept_views: dict[Hashable, tuple[int, View]] = {}  # name -> (scope size, view)
        self._kept_epoch = 0  # the epoch the kept views were made at

    # -- status ------------------------------------------------------------------------------

    def of(self, cid: str) -> CustomerStatus:
        status = self.status.get(cid)
        if status is None:
            status = self.status[cid] = CustomerStatus(cid)
        return status

    def changed(self, *, data: bool) -> None:
        self.epoch += 1
        if data:
            self._fingerprint = None

    def take_state(self, state: repo.CustomerState) -> bool:
        """A customer's stored state into memory; whether its data or state moved."""
        status = self.of(state.customer_id)
        error = state.last_error
        before = (status.last_success_at, status.error, status.version)
        status.name = state.customer_name or status.name
        status.last_success_at = state.last_success_at
        status.error = (
            SourceError(
                error.error_kind or "upstream",
                error.error_message or "the last refresh failed",
                error.upstream_status,
            )
            if error is not None
            else None
        )
        status.version = state.data_version
        return (status.last_success_at, status.error, status.version) != before

    def take_states(self, states: Mapping[str, repo.CustomerState], now: datetime) -> None:
        """What another process stored for these customers (its refresh landed)."""
        moved = data = False
        for cid, state in states.items():
            if cid not in self.status and state.last_attempt_at is None:
                continue  # nothing stored of it: nothing to load
            status = self.of(cid)
            version, name = status.version, status.name
            # A state read before a refresh of ours landed (it settled while the read was
            # answered) is older than what memory holds: it is not taken.
            if _older_than_known(state, status):
                continue
            if not self.take_state(state):
                # Only its name may have moved (another process listed the customers): the
                # answers name it, and the fingerprint does, as they do the data.
                if status.name != name:
                    moved = data = True
                continue
            moved = True
            data = data or status.version != version or status.name != name
            if status.error is None and status.last_success_at is not None:
                status.failures = 0
                status.backoff_until = None
                self._schedule(status, status.last_success_at)
            elif status.backoff_until is None or status.backoff_until < now:
                # Its holder backs it off; the lease says until when, at the latest the TTL.
                status.backoff_until = now + timedelta(seconds=max(self.ttl, 1.0))
                status.due_at = status.backoff_until
        if moved:
            self.changed(data=data)

    def names_changed(self, names: dict[str, str | None]) -> None:
        changed = False
        for cid, name in names.items():
            status = self.of(cid)
            if name is not None and status.name != name:
                status.name = name
                changed = True
        self.changed(data=changed)

    def settle(
        self, cid: str, outcome: RefreshOutcome, retry_after: float | None, now: datetime
    ) -> None:
        """The customer's state after one of this process's refreshes."""
        status = self.of(cid)
        if outcome.stored_at is not None:
            status.last_success_at = outcome.stored_at
            status.error = None
            status.failures = 0
            status.backoff_until = None
            self._schedule(status, outcome.stored_at)
            if outcome.written:
                status.version = (
                    outcome.data_version if outcome.data_version is not None else status.version + 1
                )
            self.changed(data=bool(outcome.written))
            return
        status.error = outcome.error
        status.failures += 1
        delay = backoff_seconds(status.failures, self.ttl)
        if retry_after is not None:
            # The upstream said when to ask again: not before.
            delay = max(delay, retry_after)
        status.backoff_until = now + timedelta(seconds=delay)
        status.due_at = status.backoff_until
        self.changed(data=False)

    def _schedule(self, status: CustomerStatus, stored_at: datetime) -> None:
        if self.interval:
            # Spread over the last tenth of the interval, so customers refreshed together
            # once drift apart instead of hitting the upstream together every time.
            delay = self.interval * random.uniform(0.9, 1.0)  # noqa: S311
            status.due_at = stored_at + timedelta(seconds=delay)

    def in_backoff(self, status: CustomerStatus, now: datetime) -> bool:
        return status.backoff_until is not None and now < status.backoff_until

    def backoff_error(self, status: CustomerStatus) -> SourceError:
        """What a refresh asked for during the customer's backoff says: nothing was asked,
        why, and when the customer will be asked again."""
        error = status.error or SourceError("backoff", "the last refresh failed", None)
        return SourceError(
            error.kind,
            f"not asked: backing off until {iso(status.backoff_until)} after: {error.message}",
            error.upstream_status,
        )

    # -- versions --------------------------------------------------------------------------

    def version_of(self, customer_ids: Sequence[str] | None) -> object:
        """The data version of an answer over these customers (None: all of them): the
        same in every process that holds the same data, so that their ETags agree."""
        if customer_ids is None:
            if self._fingerprint is None:
                parts = sorted((cid, s.version, s.name) for cid, s in self.status.items())
                digest = hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"))
                self._fingerprint = digest.hexdigest()[:32]
            return self._fingerprint
        return tuple((s.version, s.name) for s in map(self.of, customer_ids))

    def name_of(self, cid: str) -> str | None:
        status = self.status.get(cid)
        return status.name if status else None

    # -- freshness -------------------------------------------------------------------------

    def part(self, status: CustomerStatus, now: datetime) -> tuple[Part, datetime | None]:
        """A customer's state now, and until when it stays so without a refresh."""
        cid, last, error = status.customer_id, status.last_success_at, status.error
        if last is None:
            return Part(cid, "error", None, error or NOT_FETCHED), None
        age = _age(now, last)
        if error is not None:
            if age > self.stale_if_error:
                return Part(cid, "error", last, error), None
            return Part(cid, "stale", last, error), last + timedelta(seconds=self.stale_if_error)
        if age <= self.ttl:
            return Part(cid, "fresh", last, None), last + timedelta(seconds=self.ttl)
        return Part(cid, "stale", last, None), None

    def oldest_snapshot_age(self, now: datetime) -> float:
        """Seconds since the oldest last good snapshot of any customer (0 with none)."""
        times = [s.last_success_at for s in self.status.values() if s.last_success_at]
        return _age(now, min(times)) if times else 0.0

    def source(self, cid: str, now: datetime) -> Source:
        """How current one customer's data is now."""
        part, _ = self.part(self.of(cid), now)
        fetched = to_second(part.fetched_at) if part.fetched_at else None
        return Source(cid, part.state, fetched, age_seconds(now, part.fetched_at), part.error)

    def view(
        self,
        customer_ids: Sequence[str],
        now: datetime,
        *,
        everyone: bool = False,
        refreshing: frozenset[str] = frozenset(),
        kept: Hashable | None = None,
    ) -> View:
        """How current these customers are now. With `everyone` (the request covers every
        customer), or `kept` (a name the caller gives these customers, which names the same
        ones for as long as it is used), the view is kept until a state changes or time moves
        it on."""
        if self._kept_epoch != self.epoch:
            self._kept_views.clear()
            self._kept_epoch = self.epoch
        if not refreshing:
            if everyone:
                all_ = self._view_all
                cached = all_[1:] if all_ is not None and all_[0] == self.epoch else None
            else:
                cached = self._kept_views.get(kept) if kept is not None else None
            if (
                cached is not None
                and cached[0] == len(customer_ids)
                and (cached[1].valid_until is None or now < cached[1].valid_until)
            ):
                return cached[1]
        counts: dict[State, int] = dict.fromkeys(STATES, 0)
        oldest: datetime | None = None
        not_fresh: list[Part] = []
        errors: set[str] = set()
        valid_until: datetime | None = None
        for cid in customer_ids:
            part, until = self.part(self.of(cid), now)
            if cid in refreshing:
                part = Part(cid, "refreshing", part.fetched_at, part.error)
            counts[part.state] += 1
            if part.state != "fresh":
                not_fresh.append(part)
            if part.state == "error":
                errors.add(cid)
            if part.fetched_at is not None and (oldest is None or part.fetched_at < oldest):
                oldest = part.fetched_at
            if until is not None and (valid_until is None or until < valid_until):
                valid_until = until
        tag_source = repr(
            (
                sorted(counts.items()),
                [(p.customer_id, p.state, iso(p.fetched_at), p.error) for p in not_fresh],
            )
        )
        view = View(
            customers=len(customer_ids),
            counts=counts,
            oldest_fetched_at=to_second(oldest) if oldest else None,
            not_fresh=tuple(not_fresh),
            errors=frozenset(errors),
            valid_until=valid_until,
            tag=hashlib.blake2b(tag_source.encode(), digest_size=8).hexdigest(),
        )
        if everyone and not refreshing:
            self._view_all = (self.epoch, len(customer_ids), view)
        elif kept is not None and not refreshing:
            if len(self._kept_views) >= KEPT_VIEWS:
                self._kept_views.clear()
            self._kept_views[kept] = (len(customer_ids), view)
        return view


def _older_than_known(state: repo.CustomerState, status: CustomerStatus) -> bool:
    """Whether a stored state predates what memory already holds of the customer: an older
    last success, and no data newer than memory's (a success of another process whose clock
    runs behind still brings its data)."""
    known = status.last_success_at
    if known is None or state.data_version > status.version:
        return False
    return state.last_success_at is None or state.last_success_at < known


def backoff_seconds(failures: int, ttl: float) -> float:
    """Doubling per consecutive failure, at most the TTL, and never nothing at all."""
    doubled = BACKOFF_BASE_SECONDS * 2.0 ** min(failures - 1, 30)
    return max(MIN_BACKOFF_SECONDS, min(float(ttl), doubled))


def _age(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def age_seconds(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else int(_age(now, then))
