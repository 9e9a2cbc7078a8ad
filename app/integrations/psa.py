"""What the ticket desk asks of any PSA, and how a PSA's refusals reach it.

A connector does four things: `find` a ticket by the external reference the gateway gave it,
`open` one, add a `note`, and `close` it with a note. ConnectWise is the first
(`app.integrations.connectwise`); HaloPSA and Autotask fit the same four verbs. A connector
raises `PsaError` for every failure, with what the desk needs to decide: retry (when, after
a `Retry-After`) or give up (a request the PSA will never take).

    PsaError
    ├── retryable: no answer, a timeout, 5xx, 429 (`retry_after`), 401/403 (keys being fixed)
    └── permanent: any other 4xx (the PSA's own messages in the text)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class NewTicket:
    """A ticket to open: `ref` identifies its alert in the PSA (ConnectWise's `externalXRef`)."""

    ref: str
    company_id: str
    summary: str
    description: str


class PsaError(Exception):
    """A request the PSA did not take. The message is safe to store and show: it never holds
    a key."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.permanent = permanent


class Connector(Protocol):
    """A PSA, as the ticket desk uses it."""

    name: str

    async def find(self, ref: str) -> str | None:
        """The id of the ticket opened with external reference `ref`, if there is one."""
        ...

    async def open(self, ticket: NewTicket) -> str:
        """Open `ticket`; gives its id."""
        ...

    async def note(self, ticket_id: str, text: str) -> None:
        """Add `text` to the ticket."""
        ...

    async def close(self, ticket_id: str, text: str) -> None:
        """Add `text` as the resolution and set the closed status."""
        ...
