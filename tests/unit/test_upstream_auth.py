"""TokenProvider against a respx-faked identity server: caching, expiry, sharing, failures."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.upstream import TokenProvider, UpstreamAuthError

TOKEN_URL = "https://identity.test/connect/token"
SECRET = "very-secret-client-secret-42"
SCOPE = "elements.jobs.read.all elements.customers.read.all"

Script = Callable[[httpx.Request], httpx.Response]


class Identity:
    """The token endpoint: issues token-1, token-2, ... unless a scripted answer is queued."""

    def __init__(self) -> None:
        self.forms: list[dict[str, list[str]]] = []
        self.script: deque[Script] = deque()
        self.issued = 0
        self.expires_in: object = 3600

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(parse_qs(request.content.decode()))
        for _ in range(5):  # let concurrent callers pile up behind this request
            await asyncio.sleep(0)
        if self.script:
            return self.script.popleft()(request)
        self.issued += 1
        body: dict[str, object] = {"access_token": f"token-{self.issued}", "scope": SCOPE}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def identity() -> Iterator[Identity]:
    fake = Identity()
    with respx.mock(assert_all_mocked=True) as router:
        router.post(TOKEN_URL).mock(side_effect=fake.handle)
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(http: httpx.AsyncClient, clock: Clock) -> TokenProvider:
    return TokenProvider(
        http,
        token_url=TOKEN_URL,
        client_id="app-client-id",
        client_secret=SecretStr(SECRET),
        scope=SCOPE,
        clock=clock,
    )


def answer(status: int, content: bytes = b"", **headers: str) -> Script:
    names = {name.replace("_", "-"): value for name, value in headers.items()}
    return lambda request: httpx.Response(status, content=content, headers=names)


async def test_token_request_is_a_client_credentials_form(
    identity: Identity, provider: TokenProvider
) -> None:
    assert await provider.token() == "token-1"

    assert identity.forms == [
        {
            "grant_type": ["client_credentials"],
            "client_id": ["app-client-id"],
            "client_secret": [SECRET],
            "scope": [SCOPE],
        }
    ]


async def test_token_is_cached_until_shortly_before_it_expires(
    identity: Identity, provider: TokenProvider, clock: Clock
) -> None:
    assert await provider.token() == "token-1"
    clock.now += 3_539  # 3600 - 60 s early refresh - 1
    assert await provider.token() == "token-1"
    assert identity.issued == 1

    clock.now += 1
    assert await provider.token() == "token-2"
    assert identity.issued == 2


async def test_short_lived_token_is_kept_for_half_its_life(
    identity: Identity, provider: TokenProvider, clock: Clock
) -> None:
    identity.expires_in = "40"  # shorter than the early refresh; a string, tolerated

    await provider.token()
    clock.now += 19
    assert await provider.token() == "token-1"
    clock.now += 1
    assert await provider.token() == "token-2"


async def test_missing_expires_in_assumes_a_short_life(
    identity: Identity, provider: TokenProvider, clock: Clock
) -> None:
    identity.expires_in = None

    await provider.token()
    clock.now += 239  # 300 - 60 - 1
    assert await provider.token() == "token-1"
    clock.now += 1
    assert await provider.token() == "token-2"


async def test_concurrent_callers_share_one_token_request(
    identity: Identity, provider: TokenProvider
) -> None:
    tokens = await asyncio.gather(*(provider.token() for _ in range(25)))

    assert set(tokens) == {"token-1"}
    assert len(identity.forms) == 1


async def test_renew_replaces_the_stale_token(identity: Identity, provider: TokenProvider) -> None:
    stale = await provider.token()

    assert await provider.renew(stale) == "token-2"
    assert await provider.token() == "token-2"
    assert identity.issued == 2


async def test_renew_of_an_already_replaced_token_sends_nothing(
    identity: Identity, provider: TokenProvider
) -> None:
    stale = await provider.token()
    await provider.renew(stale)

    assert await provider.renew(stale) == "token-2"
    assert identity.issued == 2


async def test_concurrent_renewals_share_one_token_request(
    identity: Identity, provider: TokenProvider
) -> None:
    stale = await provider.token()

    renewed = await asyncio.gather(*(provider.renew(stale) for _ in range(10)))

    assert set(renewed) == {"token-2"}
    assert identity.issued == 2


async def test_renew_before_any_token_fetches_one(
    identity: Identity, provider: TokenProvider
) -> None:
    assert await provider.renew("never-issued") == "token-1"


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_refused_credentials(
    identity: Identity, provider: TokenProvider, status: int
) -> None:
    identity.script.append(
        answer(status, b'{"error": "invalid_client", "echo": "' + SECRET.encode() + b'"}')
    )

    with pytest.raises(UpstreamAuthError) as caught:
        await provider.token()

    error = caught.value
    assert error.kind == "auth"
    assert error.status == status
    assert not error.retriable
    assert "invalid_client" in str(error)
    assert SECRET not in str(error)


async def test_oauth_error_code_is_only_repeated_when_it_looks_like_one(
    identity: Identity, provider: TokenProvider
) -> None:
    identity.script.append(answer(400, b'{"error": "Bad secret ' + SECRET.encode() + b'"}'))

    with pytest.raises(UpstreamAuthError) as caught:
        await provider.token()

    assert SECRET not in str(caught.value)
    assert "Bad secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "retry_after"), [(429, 3.0), (500, None), (503, None), (408, None)]
)
async def test_server_failures_are_retriable(
    identity: Identity, provider: TokenProvider, status: int, retry_after: float | None
) -> None:
    headers = {"retry_after": "3"} if retry_after is not None else {}
    identity.script.append(answer(status, b"busy", request_id="id-9", **headers))

    with pytest.raises(UpstreamAuthError) as caught:
        await provider.token()

    assert caught.value.retriable
    assert caught.value.retry_after == retry_after
    assert caught.value.request_id == "id-9"


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b"{}", b'{"access_token": ""}', b'{"access_token": 12}'],
)
async def test_answer_without_access_token(
    identity: Identity, provider: TokenProvider, content: bytes
) -> None:
    identity.script.append(answer(200, content))

    with pytest.raises(UpstreamAuthError, match="without an access_token"):
        await provider.token()


@pytest.mark.parametrize(
    ("failure", "retriable"),
    [
        (httpx.ConnectError, True),
        (httpx.ConnectTimeout, True),
        (httpx.ReadTimeout, True),
        (httpx.UnsupportedProtocol, False),
    ],
)
async def test_transport_failure_is_an_auth_error_without_the_secret(
    identity: Identity,
    provider: TokenProvider,
    failure: type[httpx.TransportError],
    retriable: bool,
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure("boom", request=request)

    identity.script.append(fail)

    with pytest.raises(UpstreamAuthError) as caught:
        await provider.token()

    error = caught.value
    assert error.retriable is retriable
    # No chained httpx error: it would carry the request, and the request the secret.
    assert error.__cause__ is None
    assert error.__suppress_context__
    rendered = "".join(traceback.format_exception(error))
    assert SECRET not in rendered
    assert SECRET not in repr(error)


async def test_waiters_share_a_failure_instead_of_hammering(
    identity: Identity, provider: TokenProvider
) -> None:
    identity.script.append(answer(503))

    results = await asyncio.gather(*(provider.token() for _ in range(8)), return_exceptions=True)

    assert all(isinstance(result, UpstreamAuthError) for result in results)
    assert len({id(result) for result in results}) == 8  # each task raises its own copy
    assert len(identity.forms) == 1
    # The next caller, after the failure, tries again.
    assert await provider.token() == "token-1"


async def test_cancelled_request_lets_the_waiters_try(
    identity: Identity, provider: TokenProvider
) -> None:
    first = asyncio.create_task(provider.token())
    await asyncio.sleep(0)
    second = asyncio.create_task(provider.token())
    await asyncio.sleep(0)
    first.cancel()

    assert await second == "token-1"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_secret_never_shown(
    identity: Identity, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = TokenProvider(
        http, token_url=TOKEN_URL, client_id="id", client_secret=SECRET, scope=SCOPE
    )

    token = await provider.token()

    assert SECRET not in repr(provider)
    assert SECRET not in str(vars(provider))
    assert SECRET not in caplog.text
    assert token not in caplog.text
