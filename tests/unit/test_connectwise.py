"""The ConnectWise client as ConnectWise receives it (respx): the requests for open, note and
close, the look-up by `externalXRef`, and its refusals (429 with `Retry-After`, 401, a 400 with
its `errors`) as `PsaError`s that say what to fix and never carry a key."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.integrations.connectwise import ConnectWise, ConnectWiseAccount, quote
from app.integrations.psa import NewTicket, PsaError

URL = "https://api-na.myconnectwise.net"
ROOT = URL + "/v4_6_release/apis/3.0"
PUBLIC, PRIVATE = "pub-AAAA1111", "priv-BBBB2222"


@pytest.fixture
async def client() -> AsyncIterator[ConnectWise]:
    account = ConnectWiseAccount(
        url=URL,
        company="acme",
        public_key=SecretStr(PUBLIC),
        private_key=SecretStr(PRIVATE),
        client_id="client-uuid",
    )
    async with httpx.AsyncClient() as http:
        yield ConnectWise(account, http)


def board_routes(mock: respx.MockRouter) -> None:
    mock.get(f"{ROOT}/service/boards").respond(json=[{"id": 7, "name": "Help Desk"}])
    mock.get(f"{ROOT}/service/boards/7/statuses").respond(
        json=[{"id": 70, "name": "New"}, {"id": 71, "name": "Closed"}]
    )


def expected_auth() -> str:
    return "Basic " + base64.b64encode(f"acme+{PUBLIC}:{PRIVATE}".encode()).decode()


async def test_open_posts_the_ticket_on_the_board_with_its_status_company_and_ref(
    client: ConnectWise,
) -> None:
    with respx.mock(assert_all_called=True) as mock:
        board_routes(mock)
        boards = mock.routes[0]
        create = mock.post(f"{ROOT}/service/tickets").respond(201, json={"id": 4242})
        ticket = NewTicket(
            ref="jobs-gateway:1:c:exchange:mail",
            company_id="250",
            summary="x" * 150,
            description="Job j1 failed",
        )
        assert await client.open(ticket) == "4242"
    request = create.calls.last.request
    assert request.headers["authorization"] == expected_auth()
    assert request.headers["clientid"] == "client-uuid"
    assert json.loads(request.content) == {
        "summary": "x" * 100,
        "board": {"id": 7},
        "company": {"id": 250},
        "status": {"id": 70},
        "externalXRef": "jobs-gateway:1:c:exchange:mail",
        "initialDescription": "Job j1 failed",
    }
    assert boards.calls.last.request.url.params["conditions"] == 'name="Help Desk"'


async def test_a_note_is_a_detail_description_note_on_the_ticket(client: ConnectWise) -> None:
    with respx.mock(assert_all_called=True) as mock:
        note = mock.post(f"{ROOT}/service/tickets/4242/notes").respond(201, json={"id": 1})
        await client.note("4242", "Another failure")
    assert json.loads(note.calls.last.request.content) == {
        "text": "Another failure",
        "detailDescriptionFlag": True,
    }


async def test_close_adds_a_resolution_note_then_patches_the_status(client: ConnectWise) -> None:
    with respx.mock(assert_all_called=True) as mock:
        board_routes(mock)
        note = mock.post(f"{ROOT}/service/tickets/4242/notes").respond(201, json={"id": 2})
        patch = mock.patch(f"{ROOT}/service/tickets/4242").respond(json={"id": 4242})
        await client.close("4242", "Backups recovered")
    assert json.loads(note.calls.last.request.content) == {
        "text": "Backups recovered",
        "resolutionFlag": True,
    }
    assert json.loads(patch.calls.last.request.content) == [
        {"op": "replace", "path": "status", "value": {"id": 71}}
    ]


async def test_find_asks_for_the_external_reference_by_conditions(client: ConnectWise) -> None:
    with respx.mock(assert_all_called=True) as mock:
        found = mock.get(f"{ROOT}/service/tickets").respond(json=[{"id": 99}])
        assert await client.find('jobs-gateway:5:a"b') == "99"
        mock.get(f"{ROOT}/service/tickets").respond(json=[])
        assert await client.find("jobs-gateway:6:x") is None
    assert found.calls[0].request.url.params["conditions"] == 'externalXRef="jobs-gateway:5:a\\"b"'


def test_conditions_quote_strings() -> None:
    assert quote('Help "Desk"') == '"Help \\"Desk\\""'


async def test_429_is_retryable_with_its_retry_after(client: ConnectWise) -> None:
    with respx.mock() as mock:
        mock.post(f"{ROOT}/service/tickets/1/notes").respond(
            429, headers={"Retry-After": "120"}, json={"code": "Throttled", "message": "slow down"}
        )
        with pytest.raises(PsaError) as caught:
            await client.note("1", "x")
    assert caught.value.retry_after == 120
    assert not caught.value.permanent and caught.value.status == 429
    assert str(caught.value) == "ConnectWise answered 429: slow down"


async def test_401_says_which_variables_to_fix_and_never_the_keys(client: ConnectWise) -> None:
    with respx.mock() as mock:
        mock.post(f"{ROOT}/service/tickets/1/notes").respond(
            401, json={"code": "Unauthorized", "message": "Authentication failed."}
        )
        with pytest.raises(PsaError) as caught:
            await client.note("1", "x")
    text = str(caught.value)
    assert "401" in text and "CONNECTWISE_PRIVATE_KEY" in text
    assert PUBLIC not in text and PRIVATE not in text
    assert not caught.value.permanent  # keys get fixed: the work waits for them


async def test_400_carries_connectwises_errors_and_is_permanent(client: ConnectWise) -> None:
    with respx.mock() as mock:
        board_routes(mock)
        mock.post(f"{ROOT}/service/tickets").respond(
            400,
            json={
                "code": "InvalidObject",
                "message": "ticket object is invalid",
                "errors": [
                    {"code": "InvalidField", "message": "Company not found", "field": "company"},
                    {"code": "InvalidField", "message": "Summary is required", "field": "summary"},
                ],
            },
        )
        with pytest.raises(PsaError) as caught:
            await client.open(NewTicket("r", "1", "s", "d"))
    assert caught.value.permanent
    assert str(caught.value) == (
        "ConnectWise answered 400: ticket object is invalid; company: Company not found; "
        "summary: Summary is required"
    )


async def test_no_answer_in_time_is_retryable_and_says_so(client: ConnectWise) -> None:
    with respx.mock() as mock:
        mock.get(f"{ROOT}/service/tickets").mock(side_effect=httpx.ReadTimeout("slow"))
        with pytest.raises(PsaError) as caught:
            await client.find("r")
    assert not caught.value.permanent and "no answer" in str(caught.value)


async def test_check_names_each_problem_and_what_to_fix(client: ConnectWise) -> None:
    with respx.mock() as mock:
        mock.get(f"{ROOT}/service/boards").respond(json=[{"id": 7, "name": "Help Desk"}])
        mock.get(f"{ROOT}/service/boards/7/statuses").respond(json=[{"id": 70, "name": "New"}])
        mock.get(f"{ROOT}/company/companies/250").respond(json={"id": 250})
        mock.get(f"{ROOT}/company/companies/404").respond(404, json={"message": "not found"})
        problems = await client.check(["250", "404", "abc"])
    assert len(problems) == 3
    assert problems[0].startswith("CONNECTWISE_CLOSED_STATUS: the board 'Help Desk' has no status")
    assert problems[1].startswith("company 404: ConnectWise has no such company")
    assert "not a ConnectWise company id" in problems[2]


async def test_check_with_wrong_keys_is_one_line(client: ConnectWise) -> None:
    with respx.mock() as mock:
        mock.get(f"{ROOT}/service/boards").respond(401, json={"message": "Authentication failed."})
        problems = await client.check(["250"])
    assert len(problems) == 1 and "CONNECTWISE_PUBLIC_KEY" in problems[0]


async def test_check_with_no_such_board_says_so(client: ConnectWise) -> None:
    with respx.mock() as mock:
        mock.get(f"{ROOT}/service/boards").respond(json=[])
        problems = await client.check([])
    assert len(problems) == 1 and problems[0].startswith("CONNECTWISE_BOARD:")


async def test_a_pace_spends_a_budget_of_requests_per_hour() -> None:
    account = ConnectWiseAccount(URL, "acme", SecretStr("p"), SecretStr("q"), "c")
    async with httpx.AsyncClient() as http:
        client = ConnectWise(account, http, requests_per_hour=10_000)
        assert client.pace is not None
        assert (client.pace.max_rate, client.pace.time_period) == (10_000, 3600)
        # Each request spends one: with a budget of one an hour, none is left after it.
        client = ConnectWise(account, http, requests_per_hour=1)
        assert client.pace is not None and client.pace.has_capacity()
        with respx.mock() as mock:
            mock.post(f"{ROOT}/service/tickets/1/notes").respond(201, json={"id": 1})
            await client.note("1", "x")
        assert not client.pace.has_capacity()


def test_a_summary_is_at_most_100_characters_and_names_customer_type_and_module() -> None:
    from datetime import UTC, datetime

    from app.alert_rules import AlertState
    from app.integrations.texts import summary_of

    alert = AlertState(
        alert_key="c:exchange_online:mailbox",
        customer_id="c" * 36,
        job_type="exchange_online",
        module="mailbox",
        state="open",
        reason="failed",
        severity="warning",
        opened_at=datetime(2026, 12, 1, tzinfo=UTC),
        resolved_at=None,
        first_failure_at=None,
        last_failure_at=None,
        consecutive_failures=1,
        last_success_at=None,
        last_job_id=None,
    )
    long = summary_of(alert, "Contoso " * 30)
    assert len(long) == 100 and long.endswith("…: exchange_online / mailbox")
    assert summary_of(alert) == f"Backups failing for {'c' * 36}: exchange_online / mailbox"


def test_psa_connectwise_without_its_keys_refuses_to_start_naming_the_variable() -> None:
    from app.config import ConfigError, Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        demo=True,
        psa="connectwise",
        connectwise_url="https://api-na.myconnectwise.net",
        connectwise_company="acme",
        connectwise_public_key="p",
    )
    with pytest.raises(ConfigError, match=r"^CONNECTWISE_PRIVATE_KEY must be set"):
        settings.check()


async def test_an_unreachable_connectwise_names_the_url_to_check(client: ConnectWise) -> None:
    with respx.mock() as mock:
        mock.get(f"{ROOT}/service/boards").mock(side_effect=httpx.ConnectError("refused"))
        problems = await client.check([])
    assert problems == [
        f"could not reach ConnectWise at {URL} (ConnectError); check CONNECTWISE_URL"
    ]


def test_a_tickets_description_links_to_the_boards_page_of_its_customer() -> None:
    from datetime import UTC, datetime

    from app.alert_rules import AlertState
    from app.config import Settings
    from app.integrations.texts import description_of

    alert = AlertState(
        alert_key="c 1:exchange_online:mailbox",
        customer_id="c 1",
        job_type="exchange_online",
        module="mailbox",
        state="open",
        reason="failed",
        severity="critical",
        opened_at=datetime(2026, 12, 1, tzinfo=UTC),
        resolved_at=None,
        first_failure_at=None,
        last_failure_at=None,
        consecutive_failures=3,
        last_success_at=None,
        last_job_id=None,
    )
    settings = Settings(public_url="https://gateway.example.com/")  # type: ignore[call-arg]
    board = settings.public_url.rstrip("/") + "/board"  # as app.main gives it to the desk
    text = description_of(alert, None, board)
    assert text.splitlines()[-1] == (
        "On the board: https://gateway.example.com/board/customers/c%201"
        "?job_type=exchange_online&module=mailbox"
    )
    assert "On the board" not in description_of(alert, None, None)
