"""Limits on what a request may send (`app.api.middleware`): 413 for a large body, whether its
Content-Length says so or it streams in chunks, 414 for a long query string, 408 for a body
that does not arrive; each in the error envelope, with the request id; other requests as
before."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from app.api import middleware as limits
from app.api.middleware import MAX_BODY_BYTES, MAX_QUERY_BYTES, RequestLimits
from tests.api.conftest import Gateway


def assert_refused(response: httpx.Response, status: int, error: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    assert response.headers["x-request-id"]  # inside RequestIdMiddleware
    return str(body["detail"])


async def test_a_body_over_the_limit_by_its_content_length_is_413_unread(
    api: httpx.AsyncClient,
) -> None:
    body = json.dumps({"customer_ids": ["c" * (MAX_BODY_BYTES)]}).encode()
    response = await api.post(
        "/refresh", content=body, headers={"Content-Type": "application/json"}
    )
    detail = assert_refused(response, 413, "too_large")
    assert str(MAX_BODY_BYTES) in detail
    assert response.headers["connection"] == "close"  # the rest of the body is not read


async def test_a_chunked_body_over_the_limit_is_413_as_soon_as_it_is_counted(
    api: httpx.AsyncClient,
) -> None:
    chunk = b" " * 4096  # whitespace: valid JSON around an object, were it read whole
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"customer_ids": ["c1"]}'
        for _ in range(4 * MAX_BODY_BYTES // len(chunk)):
            sent += 1
            yield chunk

    request = api.build_request(
        "POST", "/refresh", content=stream(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await api.send(request)
    assert_refused(response, 413, "too_large")
    assert response.headers["connection"] == "close"
    # Refused as soon as it passed the limit, not after reading it all.
    assert sent == MAX_BODY_BYTES // len(chunk)


async def test_a_chunked_body_under_the_limit_is_served(api: httpx.AsyncClient) -> None:
    customers = (await api.get("/customers")).json()["items"]

    async def stream() -> AsyncIterator[bytes]:
        yield b'{"customer_ids": '
        yield json.dumps([customers[0]["customer_id"]]).encode()
        yield b"}"

    response = await api.post(
        "/refresh", content=stream(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text


async def test_a_query_string_over_the_limit_is_414(api: httpx.AsyncClient) -> None:
    long = "customer_id=" + "c" * MAX_QUERY_BYTES
    response = await api.get(f"/jobs?{long}")
    detail = assert_refused(response, 414, "uri_too_long")
    assert str(MAX_QUERY_BYTES) in detail
    # Refused before the key is asked for or anything is looked up: no key needed to see it.
    unkeyed = await api.get(f"/jobs?{long}", headers={"X-API-Key": ""})
    assert_refused(unkeyed, 414, "uri_too_long")


async def test_a_query_string_at_the_limit_is_served(api: httpx.AsyncClient) -> None:
    cid = (await api.get("/customers")).json()["items"][0]["customer_id"]
    query = f"customer_id={cid}"
    query += "," * (MAX_QUERY_BYTES - len(query))  # empty values are skipped
    response = await api.get(f"/jobs?{query}")
    assert response.status_code == 200, response.text
    assert {job["customer_id"] for job in response.json()["items"]} == {cid}


async def test_a_body_that_does_not_arrive_is_408(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "BODY_TIMEOUT_SECONDS", 0.05)

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"customer_ids": ['
        await asyncio.Event().wait()  # the rest never comes
        yield b"]}"  # pragma: no cover

    async with gateway() as api:
        response = await api.post(
            "/refresh", content=stalled(), headers={"Content-Type": "application/json"}
        )
        detail = assert_refused(response, 408, "request_timeout")
        assert "0.05 seconds" in detail
        assert response.headers["connection"] == "close"
        # The deadline is the body's, not the request's: a whole body is unaffected.
        assert (await api.post("/refresh", json={})).status_code != 408


async def test_normal_requests_are_unaffected(api: httpx.AsyncClient) -> None:
    jobs = await api.get("/jobs", params={"status": "failed", "limit": 5})
    assert jobs.status_code == 200
    assert jobs.headers["x-request-id"]
    started = await api.post("/refresh", json={})
    assert started.status_code in (202, 422), started.text
    assert "connection" not in started.headers
    assert (await api.post("/refresh")).status_code == 202
    assert (await api.get("/healthz")).status_code == 200


# -- The middleware alone: what no route of the app does ---------------------------------


def receiving(messages: list[Message]) -> Receive:
    """A receive that hands out `messages`, then waits for ever."""
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


async def run(app: RequestLimits, receive: Receive, **scope: object) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    base: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        # A body without a Content-Length is a chunked one (HTTP/1.1 has no other kind).
        "headers": [(b"transfer-encoding", b"chunked")],
    }
    await app({**base, **scope}, receive, send)
    return sent


async def test_a_request_without_a_body_goes_straight_to_the_app() -> None:
    """Every GET: nothing to watch, so `receive` and `send` are not wrapped (the cached read
    path pays nothing for the limits)."""
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend([receive, send])

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "http", "method": "GET", "path": "/jobs", "query_string": b""}
    await RequestLimits(app)({**scope, "headers": []}, receive, send)
    assert seen == [receive, send]
    await RequestLimits(app)({**scope, "headers": [(b"content-length", b"0")]}, receive, send)
    assert seen[2:] == [receive, send]


async def read_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads its whole body, then answers 200 with its size; a body it cannot
    read is a 400 (as FastAPI answers)."""
    size = 0
    try:
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
    except Exception:
        status, body = 400, b"could not read the body"
    else:
        status, body = 200, str(size).encode()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_a_receive_that_never_completes_is_408_when_the_deadline_passes() -> None:
    app = RequestLimits(read_body, body_timeout_seconds=0.01)
    receive = receiving([{"type": "http.request", "body": b"{", "more_body": True}])
    sent = await run(app, receive)
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"
    assert (b"connection", b"close") in sent[0]["headers"]
    assert len(sent) == 2  # the app's own 400 was replaced, not sent too


async def test_the_app_answer_stands_when_the_body_fits() -> None:
    app = RequestLimits(read_body, max_body_bytes=10)
    receive = receiving(
        [
            {"type": "http.request", "body": b"12345", "more_body": True},
            {"type": "http.request", "body": b"67890", "more_body": False},
        ],
    )
    sent = await run(app, receive)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"10"


async def test_a_streamed_body_one_byte_over_is_413() -> None:
    app = RequestLimits(read_body, max_body_bytes=10)
    receive = receiving(
        [
            {"type": "http.request", "body": b"12345", "more_body": True},
            {"type": "http.request", "body": b"678901", "more_body": True},
        ],
    )
    sent = await run(app, receive)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"] == "too_large"


async def test_after_the_body_a_receive_waits_for_the_disconnect_without_deadline() -> None:
    """A streamed response listens for the client's disconnect: no 408 for that wait."""

    async def listen(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the whole (empty) body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.body", "body": b"done"})

    messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)  # longer than the deadline below
        return {"type": "http.disconnect"}

    app = RequestLimits(listen, body_timeout_seconds=0.01)
    sent = await run(app, receive, method="GET")
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"done"
