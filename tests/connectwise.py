"""A ConnectWise PSA stand-in, written from its REST API reference (`/v4_6_release/apis/3.0`),
for the endpoints the gateway uses: service boards and their statuses, companies, tickets
(create, `conditions` on `externalXRef`, JSON Patch of the status) and ticket notes.

It checks what a real instance checks that matters here: Basic auth `company+public:private`
and the `clientId` header (401 / 400 otherwise), `summary` of 1..100 characters,
`externalXRef` of at most 100, an existing board, status and company (400 with an `errors`
list otherwise). Knobs script failures: `fail_next` answers the next requests of a kind with a
status (429 with `Retry-After`, 500, ...), `lose_next_create` stores a ticket and answers 502,
as a create whose answer never came back.

Used in process (`httpx.ASGITransport(app=standin.app)`) and over HTTP (`serve`: uvicorn in a
thread) by the end-to-end tests.
"""

from __future__ import annotations

import base64
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

ROOT = "/v4_6_release/apis/3.0"
COMPANY, PUBLIC, PRIVATE, CLIENT_ID = "acme", "pub-key-123", "priv-key-456", "client-uuid-789"


def error(status: int, message: str, *errors: tuple[str, str]) -> JSONResponse:
    body: dict[str, Any] = {"code": "InvalidObject" if errors else "Error", "message": message}
    if errors:
        body["errors"] = [
            {"code": "InvalidField", "message": m, "resource": "ticket", "field": f}
            for f, m in errors
        ]
    return JSONResponse(body, status_code=status)


@dataclass
class StandIn:
    boards: dict[int, str] = field(default_factory=lambda: {1: "Help Desk", 2: "Projects"})
    statuses: dict[int, dict[int, str]] = field(
        default_factory=lambda: {1: {10: "New", 11: "In Progress", 12: "Closed"}, 2: {20: "New"}}
    )
    companies: set[int] = field(default_factory=lambda: {250, 251, 252})
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    fail_next: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    lose_next_create: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.app = self._build()

    def creates(self) -> int:
        return sum(1 for m, p in self.requests if m == "POST" and p.endswith("/service/tickets"))

    def status_of(self, ticket_id: int) -> str:
        board = self.tickets[ticket_id]["board"]["id"]
        return self.statuses[board][self.tickets[ticket_id]["status"]["id"]]

    def _build(self) -> FastAPI:
        app = FastAPI()
        s = self

        @app.middleware("http")
        async def guard(request: Request, call_next: Any) -> Response:
            with s.lock:
                s.requests.append((request.method, request.url.path))
            expected = base64.b64encode(f"{COMPANY}+{PUBLIC}:{PRIVATE}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {expected}":
                return error(401, "Authentication failed.")
            if request.headers.get("clientid") != CLIENT_ID:
                return error(400, "clientId header is required.")
            kind = f"{request.method} {request.url.path.removeprefix(ROOT)}"
            for pattern, answers in s.fail_next.items():
                if re.fullmatch(pattern, kind) and answers:
                    status, headers = answers.pop(0)
                    return JSONResponse(
                        {"code": "Throttled" if status == 429 else "Error", "message": "scripted"},
                        status_code=status,
                        headers=headers,
                    )
            response: Response = await call_next(request)
            return response

        @app.get(ROOT + "/service/boards")
        def boards(conditions: str = "") -> list[dict[str, Any]]:
            wanted = _condition(conditions, "name")
            return [{"id": i, "name": n} for i, n in s.boards.items() if wanted in (None, n)]

        @app.get(ROOT + "/service/boards/{board_id}/statuses")
        def statuses(board_id: int) -> Any:
            if board_id not in s.boards:
                return error(404, "Board not found")
            return [{"id": i, "name": n} for i, n in s.statuses[board_id].items()]

        @app.get(ROOT + "/company/companies/{company_id}")
        def company(company_id: int) -> Any:
            if company_id not in s.companies:
                return error(404, f"Company with id {company_id} not found")
            return {
                "id": company_id,
                "identifier": f"C{company_id}",
                "name": f"Company {company_id}",
            }

        @app.get(ROOT + "/service/tickets")
        def find(conditions: str = "") -> list[dict[str, Any]]:
            ref = _condition(conditions, "externalXRef")
            return [t for t in s.tickets.values() if ref is not None and t["externalXRef"] == ref]

        @app.post(ROOT + "/service/tickets")
        async def create(request: Request) -> Any:
            body = await request.json()
            problems = []
            summary = body.get("summary") or ""
            if not 1 <= len(summary) <= 100:
                problems.append(("summary", "summary must be 1 to 100 characters"))
            if len(body.get("externalXRef") or "") > 100:
                problems.append(("externalXRef", "externalXRef is longer than 100"))
            board = (body.get("board") or {}).get("id")
            if board not in s.boards:
                problems.append(("board", "Board not found"))
            elif (body.get("status") or {}).get("id") not in s.statuses[board]:
                problems.append(("status", "Status not found on this board"))
            if (body.get("company") or {}).get("id") not in s.companies:
                problems.append(("company", "Company not found"))
            if problems:
                return error(400, "ticket object is invalid", *problems)
            with s.lock:
                ticket_id = 1000 + len(s.tickets)
                s.tickets[ticket_id] = {**body, "id": ticket_id}
                s.notes[ticket_id] = []
                if s.lose_next_create:
                    s.lose_next_create -= 1
                    return error(502, "Bad gateway")
            return JSONResponse(s.tickets[ticket_id], status_code=201)

        @app.post(ROOT + "/service/tickets/{ticket_id}/notes")
        async def note(ticket_id: int, request: Request) -> Any:
            if ticket_id not in s.tickets:
                return error(404, "Ticket not found")
            body = await request.json()
            if not any(
                body.get(f)
                for f in ("detailDescriptionFlag", "internalAnalysisFlag", "resolutionFlag")
            ):
                return error(400, "note object is invalid", ("flags", "a note needs a flag"))
            s.notes[ticket_id].append(body)
            return JSONResponse({**body, "id": len(s.notes[ticket_id])}, status_code=201)

        @app.patch(ROOT + "/service/tickets/{ticket_id}")
        async def patch(ticket_id: int, request: Request) -> Any:
            if ticket_id not in s.tickets:
                return error(404, "Ticket not found")
            for op in await request.json():
                if op.get("op") != "replace" or op.get("path") != "status":
                    return error(400, "unsupported patch", ("path", "only status here"))
                board = s.tickets[ticket_id]["board"]["id"]
                if op["value"].get("id") not in s.statuses[board]:
                    return error(400, "ticket object is invalid", ("status", "Status not found"))
                s.tickets[ticket_id]["status"] = op["value"]
            return s.tickets[ticket_id]

        return app


def _condition(conditions: str, name: str) -> str | None:
    match = re.fullmatch(rf'\s*{name}\s*=\s*"((?:[^"\\]|\\.)*)"\s*', conditions)
    if not match:
        return None
    return re.sub(r"\\(.)", r"\1", match.group(1))


class Served:
    """The stand-in over HTTP on loopback, in a thread (`stop` ends it)."""

    def __init__(self, standin: StandIn) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        # No logging config and no levels (as tests/e2e/conftest.py serves the simulator):
        # uvicorn's own would put handlers on the test process's loggers for good, and a later
        # test on the same worker (tests/unit/test_logs.py) would find them there.
        config = uvicorn.Config(
            standin.app, host="127.0.0.1", port=self.port, log_level=None, log_config=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the ConnectWise stand-in did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
