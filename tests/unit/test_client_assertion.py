"""Certificate authentication: RS256 client assertions (RFC 7523), their files and their use.

Keys and self-signed certificates are made here with cryptography; the identity server is
faked with respx, and time is injected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from app.config import ConfigError, Settings
from app.main import open_services, upstream_of
from app.upstream.auth import (
    ASSERTION_LIFETIME_SECONDS,
    CLIENT_ASSERTION_TYPE,
    ClientAssertion,
    ClientAssertionError,
    TokenProvider,
)
from app.upstream.client import CUSTOMERS_PATH, AvePointClient
from app.upstream.errors import UpstreamAuthError
from tests.clock import FakeClock

TOKEN_URL = "https://identity.test/connect/token"
BASE_URL = "https://graph.test"
CLIENT_ID = "app-client-id"
SCOPE = "elements.jobs.read.all elements.customers.read.all"
NOW = 1_790_000_000.0  # 2026-09-21, seconds since the epoch
KEY_VARIABLE = "AVEPOINT_PRIVATE_KEY_FILE"
CERTIFICATE_VARIABLE = "AVEPOINT_CERTIFICATE_FILE"


def pem_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, password: bytes = b"") -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def self_signed(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, expired: bool = False
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobs-gateway test")])
    start = datetime.now(UTC) - timedelta(days=400 if expired else 1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Pki:
    """The app's key and certificate, as objects and as the files the settings name."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    key_file: Path
    certificate_file: Path
    dir: Path

    @property
    def key_pem(self) -> bytes:
        return self.key_file.read_bytes()

    def write(self, name: str, content: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(content)
        return path


@pytest.fixture
def pki(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Pki:
    certificate = self_signed(rsa_key)
    key_file = tmp_path / "app.key"
    key_file.write_bytes(pem_of(rsa_key))
    certificate_file = tmp_path / "app.crt"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Pki(rsa_key, certificate, key_file, certificate_file, tmp_path)


@pytest.fixture
def assertion(pki: Pki) -> ClientAssertion:
    return ClientAssertion.from_files(pki.certificate_file, pki.key_file)


def decode(token: str, certificate: x509.Certificate, *, real_time: bool = False) -> dict[str, Any]:
    """The verified claims; exp, nbf and iat are checked only for an assertion made now."""
    claims: dict[str, Any] = jwt.decode(
        token,
        certificate.public_key(),  # type: ignore[arg-type]
        algorithms=["RS256"],
        audience=TOKEN_URL,
        issuer=CLIENT_ID,
        options={
            "require": ["iss", "sub", "aud", "jti", "iat", "nbf", "exp"],
            "verify_exp": real_time,
            "verify_nbf": real_time,
            "verify_iat": real_time,
        },
    )
    return claims


# ---- the assertion ---------------------------------------------------------------------


def test_assertion_verifies_with_the_certificate_public_key(
    assertion: ClientAssertion, pki: Pki
) -> None:
    # Made now, so that PyJWT checks exp, nbf and iat against the real time too.
    now = datetime.now(UTC).timestamp()

    token = assertion.make(TOKEN_URL, CLIENT_ID, now=now)

    claims = decode(token, pki.certificate, real_time=True)

    assert claims["aud"] == TOKEN_URL


def test_assertion_header_names_the_certificate(assertion: ClientAssertion, pki: Pki) -> None:
    token = assertion.make(TOKEN_URL, CLIENT_ID, now=NOW)

    header = jwt.get_unverified_header(token)
    der = pki.certificate.public_bytes(serialization.Encoding.DER)
    assert header == {
        "alg": "RS256",
        "typ": "JWT",
        "x5t": b64url(hashlib.sha1(der).digest()),
        "x5t#S256": b64url(hashlib.sha256(der).digest()),
    }
    assert assertion.thumbprint == header["x5t"]
    assert "=" not in header["x5t"] + header["x5t#S256"]


def test_assertion_claims(assertion: ClientAssertion, pki: Pki) -> None:
    claims = decode(assertion.make(TOKEN_URL, CLIENT_ID, now=NOW + 0.7), pki.certificate)

    assert claims == {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": TOKEN_URL,
        "jti": claims["jti"],
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 300,
    }
    assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME_SECONDS == 300
    assert uuid.UUID(claims["jti"])


def test_every_assertion_has_its_own_jti(assertion: ClientAssertion, pki: Pki) -> None:
    tokens = [assertion.make(TOKEN_URL, CLIENT_ID, now=NOW) for _ in range(5)]

    jtis = {decode(token, pki.certificate)["jti"] for token in tokens}
    assert len(jtis) == 5


def test_one_file_may_hold_key_and_certificate_chain(
    pki: Pki, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    # A chain whose first certificate is someone else's: the one of this key is named.
    other = self_signed(other_rsa_key).public_bytes(serialization.Encoding.PEM)
    mine = pki.certificate.public_bytes(serialization.Encoding.PEM)
    both = pki.write("both.pem", pki.key_pem + other + mine)

    assertion = ClientAssertion.from_files(both, both)

    decode(assertion.make(TOKEN_URL, CLIENT_ID, now=NOW), pki.certificate)


def test_expired_certificate_is_loaded_with_a_warning(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    expired = pki.write(
        "old.crt", self_signed(pki.key, expired=True).public_bytes(serialization.Encoding.PEM)
    )

    ClientAssertion.from_files(expired, pki.key_file)

    assert "expired" in caplog.text


# ---- files that cannot serve -----------------------------------------------------------


def _missing_key(pki: Pki) -> tuple[Path, Path]:
    return pki.certificate_file, pki.dir / "nowhere.key"


def _missing_certificate(pki: Pki) -> tuple[Path, Path]:
    return pki.dir / "nowhere.crt", pki.key_file


def _directory_as_key(pki: Pki) -> tuple[Path, Path]:
    return pki.certificate_file, pki.dir


def _garbage_key(pki: Pki) -> tuple[Path, Path]:
    return pki.certificate_file, pki.write("garbage.key", b"not a key at all\n")


def _empty_key(pki: Pki) -> tuple[Path, Path]:
    return pki.certificate_file, pki.write("empty.key", b"")


def _certificate_as_key(pki: Pki) -> tuple[Path, Path]:
    return pki.certificate_file, pki.certificate_file


def _garbage_certificate(pki: Pki) -> tuple[Path, Path]:
    return pki.write("garbage.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n"), pki.key_file


def _key_as_certificate(pki: Pki) -> tuple[Path, Path]:
    return pki.key_file, pki.key_file


def _encrypted_key(pki: Pki) -> tuple[Path, Path]:
    return pki.certificate_file, pki.write("encrypted.key", pem_of(pki.key, b"passphrase"))


def _ec_key(pki: Pki) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = pki.write("ec.crt", self_signed(key).public_bytes(serialization.Encoding.PEM))
    return certificate, pki.write("ec.key", pem_of(key))


def _short_key(pki: Pki) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    certificate = pki.write("short.crt", self_signed(key).public_bytes(serialization.Encoding.PEM))
    return certificate, pki.write("short.key", pem_of(key))


@pytest.mark.parametrize(
    ("files", "variable", "says"),
    [
        (_missing_key, KEY_VARIABLE, "cannot read"),
        (_missing_certificate, CERTIFICATE_VARIABLE, "cannot read"),
        (_directory_as_key, KEY_VARIABLE, "cannot read"),
        (_garbage_key, KEY_VARIABLE, "not an unencrypted PEM private key"),
        (_empty_key, KEY_VARIABLE, "not an unencrypted PEM private key"),
        (_certificate_as_key, KEY_VARIABLE, "not an unencrypted PEM private key"),
        (_garbage_certificate, CERTIFICATE_VARIABLE, "not a PEM certificate"),
        (_key_as_certificate, CERTIFICATE_VARIABLE, "not a PEM certificate"),
        (_encrypted_key, KEY_VARIABLE, "encrypted"),
        (_ec_key, KEY_VARIABLE, "RSA private key is needed for RS256, not EC"),
        (_short_key, KEY_VARIABLE, "1024 bits"),
    ],
)
def test_unusable_files_are_one_line_naming_the_variable(
    pki: Pki, files: Any, variable: str, says: str
) -> None:
    certificate_file, key_file = files(pki)

    with pytest.raises(ClientAssertionError) as caught:
        ClientAssertion.from_files(certificate_file, key_file)

    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)  # start-up reports it as any bad setting
    assert message.startswith(f"{variable}: ")
    assert says in message
    assert "\n" not in message
    # No chained cryptography error under the one line.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_certificate_of_another_key_is_refused(pki: Pki, other_rsa_key: rsa.RSAPrivateKey) -> None:
    someone_else = pki.write(
        "other.crt", self_signed(other_rsa_key).public_bytes(serialization.Encoding.PEM)
    )

    with pytest.raises(ClientAssertionError) as caught:
        ClientAssertion.from_files(someone_else, pki.key_file)

    assert str(caught.value) == (
        "AVEPOINT_CERTIFICATE_FILE: the certificate does not match the private key "
        "of AVEPOINT_PRIVATE_KEY_FILE"
    )


def test_error_never_repeats_the_key(pki: Pki) -> None:
    for certificate_file, key_file in (_encrypted_key(pki), _key_as_certificate(pki)):
        with pytest.raises(ClientAssertionError) as caught:
            ClientAssertion.from_files(certificate_file, key_file)
        rendered = "".join(traceback.format_exception(caught.value))
        assert "PRIVATE KEY" not in rendered
        assert pki.key_pem.decode().splitlines()[1] not in rendered


async def test_token_provider_takes_a_secret_or_an_assertion(
    assertion: ClientAssertion, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ValueError, match="not both"):
        TokenProvider(
            http,
            token_url=TOKEN_URL,
            client_id=CLIENT_ID,
            client_secret="s3cret",
            client_assertion=assertion,
            scope=SCOPE,
        )
    with pytest.raises(ValueError, match="is needed"):
        TokenProvider(http, token_url=TOKEN_URL, client_id=CLIENT_ID, scope=SCOPE)


# ---- the token requests ----------------------------------------------------------------


class Identity:
    """The token endpoint: records each form and issues token-1, token-2, ..."""

    def __init__(self) -> None:
        self.forms: list[dict[str, list[str]]] = []
        self.refuse_with: bytes | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(parse_qs(request.content.decode()))
        if self.refuse_with is not None:
            return httpx.Response(400, content=self.refuse_with)
        token = f"token-{len(self.forms)}"
        return httpx.Response(200, json={"access_token": token, "expires_in": 3600})


class Clocks:
    """Monotonic seconds for token expiry, and the wall clock assertions are dated by."""

    def __init__(self) -> None:
        self.monotonic = 100.0
        self.wall = NOW

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def identity(router: respx.MockRouter) -> Identity:
    fake = Identity()
    router.post(TOKEN_URL).mock(side_effect=fake.handle)
    return fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def provider(http: httpx.AsyncClient, assertion: ClientAssertion, clocks: Clocks) -> TokenProvider:
    return TokenProvider(
        http,
        token_url=TOKEN_URL,
        client_id=CLIENT_ID,
        client_assertion=assertion,
        scope=SCOPE,
        clock=lambda: clocks.monotonic,
        wall_clock=lambda: clocks.wall,
    )


async def test_token_request_sends_an_assertion_and_no_secret(
    identity: Identity, provider: TokenProvider, pki: Pki
) -> None:
    assert await provider.token() == "token-1"

    [form] = identity.forms
    assert set(form) == {
        "grant_type",
        "client_id",
        "scope",
        "client_assertion_type",
        "client_assertion",
    }
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_id"] == [CLIENT_ID]
    assert form["scope"] == [SCOPE]
    assert form["client_assertion_type"] == [CLIENT_ASSERTION_TYPE]
    assert CLIENT_ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    claims = decode(form["client_assertion"][0], pki.certificate)
    assert claims["iat"] == int(NOW)  # dated by the injected wall clock


async def test_the_client_uses_the_token(
    router: respx.MockRouter, identity: Identity, provider: TokenProvider, http: httpx.AsyncClient
) -> None:
    customers = router.post(f"{BASE_URL}{CUSTOMERS_PATH}").mock(
        return_value=httpx.Response(
            200,
            json={
                "data": [{"id": "c-1", "organization": "Contoso"}],
                "metadata": {"pageIndex": 1, "pageSize": 100, "totalCount": 1},
            },
        )
    )
    client = AvePointClient(http, base_url=BASE_URL, tokens=provider, concurrency=2)

    listed = await client.list_customers()

    assert [c.id for c in listed] == ["c-1"]
    assert customers.calls.last.request.headers["Authorization"] == "Bearer token-1"
    assert "client_assertion" in identity.forms[0]


async def test_expired_token_is_renewed_with_a_new_assertion(
    identity: Identity, provider: TokenProvider, clocks: Clocks, pki: Pki
) -> None:
    assert await provider.token() == "token-1"
    clocks.advance(3_600)

    assert await provider.token() == "token-2"

    first, second = (
        decode(form["client_assertion"][0], pki.certificate) for form in identity.forms
    )
    assert second["jti"] != first["jti"]
    assert second["iat"] == first["iat"] + 3_600
    assert second["exp"] == second["iat"] + 300


async def test_renewal_after_a_401_sends_a_new_assertion(
    identity: Identity, provider: TokenProvider
) -> None:
    stale = await provider.token()

    assert await provider.renew(stale) == "token-2"
    first, second = (form["client_assertion"][0] for form in identity.forms)
    assert first != second


async def test_assertion_and_key_never_shown(
    identity: Identity,
    provider: TokenProvider,
    assertion: ClientAssertion,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    token = await provider.token()
    # An error body that echoes what it was sent is not repeated either.
    echo = {"error": "invalid_client", "echo": identity.forms[0]["client_assertion"][0]}
    identity.refuse_with = json.dumps(echo).encode()
    with pytest.raises(UpstreamAuthError) as caught:
        await provider.renew(token)

    assertions = [form["client_assertion"][0] for form in identity.forms]
    key_lines = [line for line in pki.key_pem.decode().splitlines() if "-----" not in line]
    shown = "\n".join(
        [
            caplog.text,
            repr(provider),
            str(vars(provider)),
            repr(assertion),
            str(vars(assertion)),
            "".join(traceback.format_exception(caught.value)),
        ]
    )
    assert "invalid_client" in str(caught.value)
    for secret in [*assertions, *key_lines]:
        assert secret not in shown
    assert token not in caplog.text
    # Not even a signature's worth of an assertion.
    for part in assertions[0].split(".")[1:]:
        assert part not in shown


async def test_transport_failure_does_not_carry_the_assertion(
    router: respx.MockRouter, provider: TokenProvider
) -> None:
    sent: list[str] = []

    def fail(request: httpx.Request) -> httpx.Response:
        sent.append(parse_qs(request.content.decode())["client_assertion"][0])
        raise httpx.ConnectError("boom", request=request)

    router.post(TOKEN_URL).mock(side_effect=fail)

    with pytest.raises(UpstreamAuthError) as caught:
        await provider.token()

    assert caught.value.__cause__ is None
    assert sent[0] not in "".join(traceback.format_exception(caught.value))


# ---- the settings and start-up ---------------------------------------------------------


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "avepoint_base_url": BASE_URL,
        "avepoint_token_url": TOKEN_URL,
        "avepoint_client_id": CLIENT_ID,
        "avepoint_client_secret": None,
        "avepoint_certificate_file": None,
        "avepoint_private_key_file": None,
        "database_url": f"sqlite:///{tmp_path / 'db' / 'store.sqlite'}",
        "api_keys": "test-key-0123456789",
        "customer_ids": "",
        "demo": False,
        "auth_disabled": False,
        "refresh_interval_seconds": 0,
        "webhook_urls": "",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def test_settings_with_both_files_build_an_upstream_with_the_assertion(
    tmp_path: Path, pki: Pki
) -> None:
    settings = settings_for(
        tmp_path,
        avepoint_certificate_file=pki.certificate_file,
        avepoint_private_key_file=pki.key_file,
    )
    settings.check()

    upstream = upstream_of(settings, None)

    assert upstream.client_assertion is not None
    assert (
        upstream.client_assertion.thumbprint
        == ClientAssertion.from_files(pki.certificate_file, pki.key_file).thumbprint
    )
    assert upstream.client_secret == ""
    assert "ClientAssertion" not in repr(upstream)


def test_certificate_wins_over_a_secret_set_too(tmp_path: Path, pki: Pki) -> None:
    settings = settings_for(
        tmp_path,
        avepoint_client_secret="s3cret-too",
        avepoint_certificate_file=pki.certificate_file,
        avepoint_private_key_file=pki.key_file,
    )
    settings.check()

    upstream = upstream_of(settings, None)

    assert upstream.client_assertion is not None
    assert upstream.client_secret == ""


def test_settings_with_a_secret_build_no_assertion(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, avepoint_client_secret="s3cret")
    settings.check()

    upstream = upstream_of(settings, None)

    assert upstream.client_assertion is None
    assert upstream.client_secret == "s3cret"


@pytest.mark.parametrize("only", ["avepoint_certificate_file", "avepoint_private_key_file"])
def test_settings_with_one_file_are_refused(tmp_path: Path, pki: Pki, only: str) -> None:
    path = pki.certificate_file if only == "avepoint_certificate_file" else pki.key_file
    settings = settings_for(tmp_path, **{only: path})

    with pytest.raises(ConfigError, match="go together"):
        settings.check()


def test_unusable_key_stops_start_up_naming_the_variable(tmp_path: Path, pki: Pki) -> None:
    settings = settings_for(
        tmp_path,
        avepoint_certificate_file=pki.certificate_file,
        avepoint_private_key_file=_encrypted_key(pki)[1],
    )
    settings.check()  # the files exist; what they hold is checked when the upstream is built

    with pytest.raises(ConfigError, match=r"^AVEPOINT_PRIVATE_KEY_FILE: .*encrypted"):
        upstream_of(settings, None)


async def test_service_starts_with_a_certificate_and_asks_with_assertions(
    tmp_path: Path, pki: Pki, router: respx.MockRouter, identity: Identity
) -> None:
    router.post(f"{BASE_URL}{CUSTOMERS_PATH}").mock(
        return_value=httpx.Response(
            200, json={"data": [], "metadata": {"pageIndex": 1, "pageSize": 100}}
        )
    )
    settings = settings_for(
        tmp_path,
        avepoint_certificate_file=pki.certificate_file,
        avepoint_private_key_file=pki.key_file,
    )
    settings.check()
    clock = FakeClock()

    async with open_services(settings, clock=clock, background=False) as services:
        assert await services.refresher.customer_ids() == []

    [form] = identity.forms
    assert "client_secret" not in form
    claims = decode(form["client_assertion"][0], pki.certificate)
    assert claims["iat"] == int(clock.now.timestamp())  # the app's clock dates assertions


async def test_service_with_an_unusable_key_does_not_start(tmp_path: Path, pki: Pki) -> None:
    settings = settings_for(
        tmp_path,
        avepoint_certificate_file=pki.certificate_file,
        avepoint_private_key_file=_garbage_key(pki)[1],
    )

    with pytest.raises(ConfigError, match=r"^AVEPOINT_PRIVATE_KEY_FILE: not an unencrypted"):
        async with open_services(settings, clock=FakeClock(), background=False):
            pass
