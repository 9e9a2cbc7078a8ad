"""ConnectWise PSA (Manage), the few endpoints the ticket desk and `psa check` use.

Under `{CONNECTWISE_URL}/v4_6_release/apis/3.0`, with Basic auth `company+public:private`
and the integration's `clientId` header:

- `POST /service/tickets`: open (`summary` <= 100 characters, `board`, `company`, `status`,
  `externalXRef` <= 100, `initialDescription`);
- `GET /service/tickets?conditions=externalXRef="..."`: find the ticket of an alert;
- `POST /service/tickets/{id}/notes`: a note (`detailDescriptionFlag`, or `resolutionFlag`);
- `PATCH /service/tickets/{id}`: the status, as a JSON Patch (`replace` of `status`);
- `GET /service/boards?conditions=name="..."`, `GET /service/boards/{id}/statuses`,
  `GET /company/companies/{id}`: the board, its statuses (by name: ConnectWise takes
  references by id, so both are looked up once and kept) and the companies, for `psa check`.

Errors come as `{"code", "message", "errors": [{"code", "message", "field"}]}`: their
messages are what `PsaError` says, never a key. An optional pace (`requests_per_hour`,
aiolimiter) keeps all tickets together under a budget.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from aiolimiter import AsyncLimiter
from pydantic import SecretStr

from app import __version__
from app.alerts.webhooks import retry_after_seconds
from app.integrations.psa import NewTicket, PsaError

log = logging.getLogger(__name__)

API_ROOT = "/v4_6_release/apis/3.0"
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
"""A create may take its time; one that times out is looked up before it is sent again."""
SUMMARY_MAX = 100
REF_MAX = 100
RETRYABLE = frozenset({401, 403, 408, 409, 425, 429})
"""4xx answers worth trying again: keys being fixed, throttling, a conflict of the moment."""


@dataclass(frozen=True)
class ConnectWiseAccount:
    """Where and as whom: the API member's keys and the integration's clientId."""

    url: str  # without the API root
    company: str
    public_key: SecretStr
    private_key: SecretStr
    client_id: str
    board: str = "Help Desk"
    open_status: str = "New"
    closed_status: str = "Closed"


def quote(value: str) -> str:
    """A string value in a `conditions` expression: double quotes, inner ones escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def error_text(response: httpx.Response) -> str:
    """What ConnectWise said: its message and each of its `errors` (field: message)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    parts: list[str] = []
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            parts.append(body["message"])
        for error in body.get("errors") or []:
            if isinstance(error, dict) and error.get("message"):
                field = error.get("field")
                parts.append(f"{field}: {error['message']}" if field else str(error["message"]))
    said = "; ".join(parts)[:500]
    return f"ConnectWise answered {response.status_code}" + (f": {said}" if said else "")


class ConnectWise:
    """The connector (`app.integrations.psa.Connector`) for ConnectWise PSA."""

    name = "connectwise"

    def __init__(
        self,
        account: ConnectWiseAccount,
        http: httpx.AsyncClient,
        *,
        requests_per_hour: int = 0,
    ) -> None:
        self.account = account
        self.http = http
        self.base = account.url.rstrip("/") + API_ROOT
        self.pace = AsyncLimiter(requests_per_hour, 3600) if requests_per_hour else None
        self._board: dict[str, Any] | None = None
        self._statuses: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def _auth(self) -> httpx.BasicAuth:
        a = self.account
        return httpx.BasicAuth(
            f"{a.company}+{a.public_key.get_secret_value()}", a.private_key.get_secret_value()
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or a `PsaError` saying what went wrong."""
        if self.pace is not None:
            await self.pace.acquire()
        headers = {
            "clientId": self.account.client_id,
            "accept": "application/json",
            "user-agent": f"jobs-gateway/{__version__}",
        }
        if json is not None:
            headers["content-type"] = "application/json"
        try:
            response = await self.http.request(
                method,
                self.base + path,
                json=json,
                params=params,
                headers=headers,
                auth=self._auth(),
                timeout=TIMEOUT,
            )
        except httpx.TimeoutException:
            raise PsaError(f"no answer from ConnectWise within {TIMEOUT.read:g} s") from None
        except httpx.HTTPError as exc:
            # The URL is shown: CONNECTWISE_URL may hold no credentials (`Settings`).
            raise PsaError(
                f"could not reach ConnectWise at {self.account.url} ({type(exc).__name__}); "
                "check CONNECTWISE_URL"
            ) from None
        if response.is_success:
            return response.json() if response.content else None
        status = response.status_code
        text = error_text(response)
        if status == 401:
            text += " (check CONNECTWISE_COMPANY, CONNECTWISE_PUBLIC_KEY, CONNECTWISE_PRIVATE_KEY)"
        elif status == 403:
            text += " (the API member's security role lacks a permission: see the README)"
        raise PsaError(
            text,
            status=status,
            retry_after=retry_after_seconds(response, datetime.now(UTC)),
            permanent=400 <= status < 500 and status not in RETRYABLE,
        )

    # -- the board and its statuses, looked up once -------------------------------------------

    async def board(self) -> dict[str, Any] | None:
        """The board `CONNECTWISE_BOARD` names, or None when there is none."""
        if self._board is None:
            rows = await self.request(
                "GET",
                "/service/boards",
                params={"conditions": f"name={quote(self.account.board)}", "pageSize": 2},
            )
            self._board = rows[0] if rows else None
        return self._board

    async def status_ids(self) -> dict[str, int]:
        """The board's statuses, name -> id."""
        if not self._statuses:
            board = await self.board()
            if board is None:
                return {}
            rows = await self.request(
                "GET", f"/service/boards/{board['id']}/statuses", params={"pageSize": 1000}
            )
            self._statuses = {row["name"]: int(row["id"]) for row in rows or []}
        return self._statuses

    async def _refs(self, status: str) -> tuple[int, int]:
        async with self._lock:
            board = await self.board()
            if board is None:
                raise PsaError(
                    f"ConnectWise has no service board named {self.account.board!r} "
                    "(CONNECTWISE_BOARD)"
                )
            statuses = await self.status_ids()
        if status not in statuses:
            raise PsaError(
                f"the board {self.account.board!r} has no status named {status!r} "
                "(CONNECTWISE_OPEN_STATUS, CONNECTWISE_CLOSED_STATUS)"
            )
        return int(board["id"]), statuses[status]

    # -- the connector -----------------------------------------------------------------------

    async def find(self, ref: str) -> str | None:
        rows = await self.request(
            "GET",
            "/service/tickets",
            params={"conditions": f"externalXRef={quote(ref)}", "orderBy": "id asc"},
        )
        return str(rows[0]["id"]) if rows else None

    async def open(self, ticket: NewTicket) -> str:
        board_id, status_id = await self._refs(self.account.open_status)
        body = {
            "summary": ticket.summary[:SUMMARY_MAX],
            "board": {"id": board_id},
            "company": {"id": int(ticket.company_id)},
            "status": {"id": status_id},
            "externalXRef": ticket.ref[:REF_MAX],
            "initialDescription": ticket.description,
        }
        created = await self.request("POST", "/service/tickets", json=body)
        return str(created["id"])

    async def note(self, ticket_id: str, text: str) -> None:
        await self.request(
            "POST",
            f"/service/tickets/{int(ticket_id)}/notes",
            json={"text": text, "detailDescriptionFlag": True},
        )

    async def close(self, ticket_id: str, text: str) -> None:
        _, status_id = await self._refs(self.account.closed_status)
        await self.request(
            "POST",
            f"/service/tickets/{int(ticket_id)}/notes",
            json={"text": text, "resolutionFlag": True},
        )
        await self.request(
            "PATCH",
            f"/service/tickets/{int(ticket_id)}",
            json=[{"op": "replace", "path": "status", "value": {"id": status_id}}],
        )

    # -- psa check ---------------------------------------------------------------------------

    async def check(self, company_ids: list[str]) -> list[str]:
        """One line per problem, each saying what to fix; [] when all is well."""
        a = self.account
        try:
            board = await self.board()
        except PsaError as exc:
            return [str(exc)]
        if board is None:
            return [
                f"CONNECTWISE_BOARD: no service board named {a.board!r} that the API member "
                "may see; set the board's exact name, or give the member's role Service Desk "
                "access to it"
            ]
        problems = []
        statuses = await self.status_ids()
        for variable, name in (
            ("CONNECTWISE_OPEN_STATUS", a.open_status),
            ("CONNECTWISE_CLOSED_STATUS", a.closed_status),
        ):
            if name not in statuses:
                problems.append(
                    f"{variable}: the board {a.board!r} has no status {name!r}; it has "
                    + (", ".join(repr(s) for s in sorted(statuses)) or "none")
                )
        for company_id in company_ids:
            if not company_id.isdecimal():
                problems.append(
                    f"company {company_id!r} is not a ConnectWise company id (a number); "
                    "run `jobs-gateway psa map CUSTOMER_ID COMPANY_ID` again"
                )
                continue
            try:
                await self.request("GET", f"/company/companies/{company_id}")
            except PsaError as exc:
                if exc.status == 404:
                    problems.append(
                        f"company {company_id}: ConnectWise has no such company; map the "
                        "customer to an existing company id with `jobs-gateway psa map`"
                    )
                else:
                    problems.append(f"company {company_id}: {exc}")
        return problems
