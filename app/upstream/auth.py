"""OAuth2 client-credentials tokens for the AvePoint Graph API.

`TokenProvider` asks the identity server for a token, keeps it until shortly before it
expires, and makes concurrent callers share one token request. `renew` replaces a token
the API has refused (401), unless another caller already did. Any failure is an
`UpstreamAuthError` whose message never holds the secret or a token.

The app proves who it is with a client secret or, as AvePoint recommends, a certificate:
`ClientAssertion` signs a fresh RS256 JWT (RFC 7523, the form IdentityServer and the
Microsoft identity platform accept) for every token request. Its files are read once, at
start-up; a file that cannot serve is a `ClientAssertionError`, a `ConfigError` whose one
line names the variable. Neither the key nor an assertion is ever logged or repeated.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from pydantic import SecretStr

from app.config import ConfigError
from app.upstream.errors import UpstreamAuthError
from app.upstream.wire import count_or_none, is_transient, request_id_of, retry_after_of

if TYPE_CHECKING:  # imported where used: only a certificate's app signs (50 ms a process)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger("app.upstream")

# expires_in is optional in OAuth2; without it, assume a short life and let a 401 renew.
DEFAULT_EXPIRES_IN = 300.0

# The OAuth2 error codes are short snake_case words; anything else in the body is not
# repeated, since an error body is opaque and might echo what we sent.
_OAUTH_ERROR_CODE = re.compile(r"[a-z_]{1,64}")

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# An assertion is made for one token request, so a short life is plenty; 5 minutes leaves
# room for clocks that disagree a little (Microsoft's samples use 5 to 10 minutes).
ASSERTION_LIFETIME_SECONDS = 300
# Less than 2048 bits is refused by the Microsoft identity platform, and weak anyway.
MIN_RSA_KEY_BITS = 2048

CERTIFICATE_VARIABLE = "AVEPOINT_CERTIFICATE_FILE"
PRIVATE_KEY_VARIABLE = "AVEPOINT_PRIVATE_KEY_FILE"


class ClientAssertionError(ConfigError):
    """The certificate or private key cannot sign assertions; one line naming the variable."""


class ClientAssertion:
    """Signs RS256 client assertions with the app's private key, naming its certificate.

    The header carries the certificate's thumbprints: `x5t` (SHA-1, which the Microsoft
    identity platform and IdentityServer look the certificate up by) and `x5t#S256`.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> None:
        from cryptography.hazmat.primitives import hashes

        if private_key.key_size < MIN_RSA_KEY_BITS:
            raise ClientAssertionError(
                f"{PRIVATE_KEY_VARIABLE}: the RSA key has {private_key.key_size} bits; "
                f"at least {MIN_RSA_KEY_BITS} are needed"
            )
        if not _same_public_key(certificate, private_key):
            raise ClientAssertionError(
                f"{CERTIFICATE_VARIABLE}: the certificate does not match the private key "
                f"of {PRIVATE_KEY_VARIABLE}"
            )
        self._private_key = private_key
        self.thumbprint = _b64url(certificate.fingerprint(hashes.SHA1()))  # noqa: S303
        self.thumbprint_sha256 = _b64url(certificate.fingerprint(hashes.SHA256()))
        self.not_valid_after = certificate.not_valid_after_utc

    @classmethod
    def from_files(cls, certificate_file: Path, private_key_file: Path) -> ClientAssertion:
        """The signer for a PEM certificate and its unencrypted PEM private key.

        Either may be one file holding both; the certificate file may hold a chain, whose
        certificate of this key is the one named.
        """
        from cryptography import x509
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key_pem = _read(PRIVATE_KEY_VARIABLE, private_key_file)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:  # what cryptography raises for an encrypted key without password
            raise ClientAssertionError(
                f"{PRIVATE_KEY_VARIABLE}: the private key is encrypted; "
                "an unencrypted PEM private key is needed"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise ClientAssertionError(
                f"{PRIVATE_KEY_VARIABLE}: not an unencrypted PEM private key"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            kind = type(key).__name__.removesuffix("PrivateKey") or "another kind"
            raise ClientAssertionError(
                f"{PRIVATE_KEY_VARIABLE}: an RSA private key is needed for RS256, not {kind}"
            )
        try:
            certificates = x509.load_pem_x509_certificates(
                _read(CERTIFICATE_VARIABLE, certificate_file)
            )
        except ValueError:
            raise ClientAssertionError(f"{CERTIFICATE_VARIABLE}: not a PEM certificate") from None
        certificate = next((c for c in certificates if _same_public_key(c, key)), certificates[0])
        assertion = cls(key, certificate)
        now = datetime.now(UTC)
        if now >= assertion.not_valid_after:
            # Refusing to start would also refuse the cached data; the identity server's
            # refusals (invalid_client) will say the rest.
            logger.warning(
                "AvePoint certificate %s expired at %s; token requests will be refused",
                assertion.thumbprint,
                assertion.not_valid_after.isoformat(),
            )
        return assertion

    def __repr__(self) -> str:
        return f"ClientAssertion(x5t={self.thumbprint!r})"

    def make(self, token_url: str, client_id: str, now: float) -> str:
        """A signed assertion for one token request at `now` (seconds since the epoch)."""
        issued = int(now)
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "jti": str(uuid.uuid4()),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ASSERTION_LIFETIME_SECONDS,
        }
        headers = {"typ": "JWT", "x5t": self.thumbprint, "x5t#S256": self.thumbprint_sha256}
        import jwt

        return jwt.encode(claims, self._private_key, algorithm="RS256", headers=headers)


def _read(variable: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClientAssertionError(f"{variable}: cannot read {path} ({reason})") from None


def _same_public_key(certificate: x509.Certificate, key: rsa.RSAPrivateKey) -> bool:
    from cryptography.hazmat.primitives import serialization

    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    )


def _b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class TokenProvider:
    """Bearer tokens for one registered app, cached and shared between tasks.

    The app proves itself with `client_secret` or with `client_assertion` (a certificate),
    not both. `clock` times the token's life (monotonic); `wall_clock` dates assertions.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str | SecretStr | None = None,
        client_assertion: ClientAssertion | None = None,
        scope: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        early_refresh_seconds: float = 60,
    ) -> None:
        if isinstance(client_secret, str):
            client_secret = SecretStr(client_secret)
        if client_assertion is not None and client_secret and client_secret.get_secret_value():
            raise ValueError("a client secret or a client assertion, not both")
        if client_assertion is None and client_secret is None:
            raise ValueError("a client secret or a client assertion is needed")
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret if client_assertion is None else None
        self._client_assertion = client_assertion
        self._scope = scope
        self._clock = clock
        self._wall_clock = wall_clock
        self._early_refresh_seconds = early_refresh_seconds
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        # Bumped after every token request, so tasks that queued behind a request can
        # tell that it happened and share its outcome instead of sending their own.
        self._generation = 0
        self._failure: UpstreamAuthError | None = None

    def __repr__(self) -> str:
        return f"TokenProvider(token_url={self._token_url!r}, client_id={self._client_id!r})"

    async def token(self) -> str:
        """A token good for at least `early_refresh_seconds` more (as far as we know)."""
        current = self._fresh()
        if current is not None:
            return current
        return await self._refresh(stale=None)

    async def renew(self, stale: str) -> str:
        """A token other than `stale`: fetched now, unless another task already did."""
        return await self._refresh(stale=stale)

    def _fresh(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def _refresh(self, *, stale: str | None) -> str:
        generation = self._generation
        async with self._lock:
            if self._generation != generation and self._failure is not None:
                # The request we queued behind just failed: asking again at once would
                # only hammer a failing identity server once per waiting task.
                raise self._failure.copy()
            current = self._fresh()
            if current is not None and current != stale:
                return current
            try:
                token, expires_in = await self._request()
            except UpstreamAuthError as error:
                self._failure = error
                raise
            except BaseException:
                # Cancelled (or a bug): nothing to share, so the waiters try themselves.
                self._failure = None
                raise
            finally:
                self._generation += 1
            self._failure = None
            self._token = token
            lifetime = max(expires_in - self._early_refresh_seconds, expires_in / 2)
            self._refresh_at = self._clock() + lifetime
            logger.info("AvePoint token obtained; it expires in %.0fs", expires_in)
            return token

    async def _request(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "client_id": self._client_id}
        if self._client_assertion is not None:
            # A fresh one each time: an identity server may refuse a jti it has seen.
            form["scope"] = self._scope
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = self._client_assertion.make(
                self._token_url, self._client_id, now=self._wall_clock()
            )
        else:
            assert self._client_secret is not None  # __init__ holds one or the other
            form["client_secret"] = self._client_secret.get_secret_value()
            form["scope"] = self._scope
        try:
            response = await self._http.post(
                self._token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.TimeoutException:
            # `from None`: the httpx error carries the request, whose body holds the secret.
            raise UpstreamAuthError("AvePoint token request timed out", retriable=True) from None
        except httpx.RequestError as exc:
            raise UpstreamAuthError(
                f"AvePoint token endpoint unreachable ({type(exc).__name__})",
                retriable=is_transient(exc),
            ) from None

        request_id = request_id_of(response.headers)
        status = response.status_code
        if status != 200:
            retriable = status in (408, 429) or status >= 500
            raise UpstreamAuthError(
                f"AvePoint token endpoint refused the client credentials{_oauth_error(response)}"
                if status in (400, 401, 403)
                else f"AvePoint token endpoint failed with HTTP {status}",
                status=status,
                request_id=request_id,
                retriable=retriable,
                retry_after=(
                    retry_after_of(response.headers, now=datetime.now(UTC)) if retriable else None
                ),
            )
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        access_token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access_token, str) or not access_token.strip():
            raise UpstreamAuthError(
                "AvePoint token endpoint answered without an access_token",
                status=status,
                request_id=request_id,
            )
        expires_in = count_or_none(body.get("expires_in")) if isinstance(body, dict) else None
        return access_token.strip(), (
            float(expires_in) if expires_in is not None else DEFAULT_EXPIRES_IN
        )


def _oauth_error(response: httpx.Response) -> str:
    """': invalid_client' from an OAuth2 error body, or '' when there is none."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str) and _OAUTH_ERROR_CODE.fullmatch(code):
        return f": {code}"
    return ""
