"""Refresh: how current every customer's data is, and walks that make it current.

The API never calls the upstream itself: it asks `Refresher.ensure()` for the customers it
covers, then reads the store. The package, by job:

- `ledger`: what the process knows of every customer (freshness, backoff, data versions);
- `directory`: which customers there are (`CUSTOMER_IDS`, or discovered upstream);
- `refresher`: `ensure`, single flight, backoff, waiting on another process's walk;
- `leasing`: the customer's lease, taken when a walk starts, kept while it runs;
- `walk`: fetch -> normalize -> store, one customer;
- `schedule`: the background refresh and the warm-up;
- `replicas`: what other processes on the database stored, heard and looked for;
- `runs`: `POST /refresh` runs.
"""

from app.refresh.directory import DiscoveryFailed, Listing
from app.refresh.leasing import LEASE_SECONDS
from app.refresh.ledger import Freshness, RefreshOutcome, Source, SourceError, View
from app.refresh.refresher import Refresher

__all__ = [
    "LEASE_SECONDS",
    "DiscoveryFailed",
    "Freshness",
    "Listing",
    "RefreshOutcome",
    "Refresher",
    "Source",
    "SourceError",
    "View",
]
