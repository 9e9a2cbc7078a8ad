"""Settings: every variable of CONTRACT.md, read from the environment and a `.env` file.

`get_settings()` reads them once; `create_app(settings)` and the CLI take a `Settings` so tests
build their own. `Settings.check()` holds the start-up refusals: one line naming the variable.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app import catalog

DEFAULT_DATABASE_URL = "sqlite:///./data/jobs-gateway.db"

EVENT_TYPES = (
    "job.created",
    "job.status_changed",
    "alert.opened",
    "alert.updated",
    "alert.resolved",
    "object.no_result",
    "object.recovered",
)
"""Every type of event the change feed tells (see `app.store.telling`)."""

SMTP_SCHEMES = ("smtp", "smtps", "smtp+starttls")

DEFAULT_ALERT_STATUSES = ("failed", "failed_to_start", "finished_with_exception")
DEFAULT_WEBHOOK_EVENTS = ("alert.opened", "alert.updated", "alert.resolved")


class ConfigError(Exception):
    """A setting that stops start-up; the message is one line naming the variable."""


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    avepoint_base_url: str = "https://graph.avepointonlineservices.com"
    avepoint_token_url: str = "https://identity.avepointonlineservices.com/connect/token"  # noqa: S105
    avepoint_client_id: str | None = None
    avepoint_client_secret: SecretStr | None = None
    # Certificate authentication (a JWT client assertion, RS256), instead of the secret: the
    # app's certificate (PEM) and its private key (PEM, unencrypted), as files.
    avepoint_certificate_file: Path | None = None
    avepoint_private_key_file: Path | None = None
    avepoint_scope: str = "elements.jobs.read.all elements.customers.read.all"
    customer_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    database_url: str = DEFAULT_DATABASE_URL
    cache_ttl_seconds: float = Field(300, ge=0)
    stale_if_error_seconds: float = Field(86400, ge=0)
    request_wait_seconds: float = Field(10, ge=0)
    upstream_concurrency: int = Field(8, ge=1, le=256)
    upstream_timeout_seconds: float = Field(30, gt=0)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # None: 80% of the TTL, so that customers are refreshed before they go stale; 0: off.
    refresh_interval_seconds: float | None = Field(None, ge=0)
    auth_disabled: bool = False
    demo: bool = False
    # The built-in simulator, used when DEMO is on.
    demo_customers: int = Field(12, ge=1, le=10_000)
    demo_seed: int = 42
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Older history, events, deliveries, snapshots, and jobs the upstream stopped reporting
    # are purged; 0 keeps everything.
    retention_days: float = Field(90, ge=0, le=100 * 366)
    # Requests per key per minute (a key created with `keys create` may have its own); 0: off.
    rate_limit_per_minute: int = Field(600, ge=0, le=10_000_000)
    # Upstream requests per second, all customers together, so that a fan-out over many
    # customers never bursts past what the tenant may send; 0: no pace, only
    # UPSTREAM_CONCURRENCY. AvePoint publishes no number: this is a cautious default.
    upstream_rate_per_second: float = Field(50, ge=0, le=100_000)
    # Origins whose pages may call the API from a browser (CORS); empty: none.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Alerts, the change feed and webhooks (see app.alert_rules, app.store.telling, app.alerts).
    alert_statuses: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALERT_STATUSES)
    )
    overdue_hours: float = Field(36, ge=0, le=24 * 366)
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    webhook_events: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS)
    )
    # The board (app.board): how long a sign-in lasts, and the secret its session cookies
    # and CSRF tokens are signed with (unset: a random one per process, so sign-ins end
    # with a restart and do not carry across replicas).
    board_session_hours: float = Field(12, gt=0, le=24 * 366)
    board_secret: SecretStr | None = None
    # Tickets in a PSA (see app.integrations): the connector, its account and the guard.
    psa: Literal["", "connectwise"] = ""
    connectwise_url: str | None = None
    connectwise_company: str | None = None
    connectwise_public_key: SecretStr | None = None
    connectwise_private_key: SecretStr | None = None
    connectwise_client_id: str | None = None
    connectwise_board: str = "Help Desk"
    connectwise_open_status: str = "New"
    connectwise_closed_status: str = "Closed"
    psa_min_severity: Literal["warning", "critical"] = "warning"
    psa_max_new_tickets_per_hour: int = Field(30, ge=1, le=100_000)
    # Requests per hour to the PSA, all tickets together (0: no pace); Autotask-style budgets.
    psa_requests_per_hour: int = Field(0, ge=0, le=10_000_000)
    # Expectations and the grid (see app.expectations): the business day's zone and start,
    # and which result a day with several shows.
    timezone: str = "UTC"
    day_start_hour: int = Field(0, ge=0, le=23)
    day_result_rule: Literal["worst", "last"] = "worst"
    # The daily digest (app.alerts.digest): recipients, sender, when (in TIMEZONE), and how.
    digest_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    digest_from: str = ""
    digest_at: str = "07:30"
    # smtp://user:pass@host:587 (STARTTLS when offered), smtps://...:465 (TLS),
    # smtp+starttls://... (STARTTLS required), smtp://host:25 (a local relay).
    smtp_url: SecretStr | None = None
    # Where people reach this service: the digest's and the tickets' links to the board.
    public_url: str = "http://127.0.0.1:8000"

    @field_validator(
        "customer_ids",
        "api_keys",
        "alert_statuses",
        "webhook_urls",
        "webhook_events",
        "cors_origins",
        "digest_to",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("alert_statuses")
    @classmethod
    def _known_statuses(cls, value: list[str]) -> list[str]:
        names = [e.name for e in catalog.STATUS.entries]
        unknown = [v for v in value if v not in names]
        if unknown:
            raise ValueError(f"unknown status {unknown[0]!r}; statuses are {', '.join(names)}")
        if "finished" in value:
            raise ValueError("'finished' is what resolves an alert; it cannot open one")
        return value

    @field_validator("webhook_events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in EVENT_TYPES]
        if unknown:
            raise ValueError(
                f"unknown event type {unknown[0]!r}; types are {', '.join(EVENT_TYPES)}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: an IANA name such as Europe/Amsterdam"
            ) from None
        return value

    @field_validator("digest_at")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        hours, _, minutes = value.partition(":")
        if not (hours.isdecimal() and minutes.isdecimal() and len(minutes) == 2):
            raise ValueError(f"not a time of day HH:MM: {value!r}")
        if int(hours) > 23 or int(minutes) > 59:
            raise ValueError(f"not a time of day HH:MM: {value!r}")
        return f"{int(hours):02d}:{minutes}"

    @field_validator("digest_to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if "@" not in address or any(c in address for c in " <>\r\n,"):
                raise ValueError(f"not an email address: {address!r}")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        parts = urlsplit(value.get_secret_value())
        try:
            valid_port = parts.port != 0
        except ValueError:
            valid_port = False
        if parts.scheme not in SMTP_SCHEMES or not parts.hostname or not valid_port:
            # Only the scheme is echoed: the rest holds the password.
            raise ValueError(
                f"not an SMTP URL ({', '.join(s + '://' for s in SMTP_SCHEMES)}host[:port]): "
                f"{parts.scheme}://..."
            )
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @field_validator("webhook_urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            try:
                valid_port = parts.port != 0  # None (the default) is fine
            except ValueError:  # out of range
                valid_port = False
            if parts.scheme not in ("http", "https") or not parts.hostname or not valid_port:
                # Only the scheme is echoed: the rest may hold a token.
                raise ValueError(f"not an http(s) URL with a valid port: {parts.scheme}://...")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
                or parts.query
            ):
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        return [o.rstrip("/") for o in value]

    @field_validator("connectwise_url")
    @classmethod
    def _psa_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            raise ValueError(f"not an http(s) URL without credentials: {parts.scheme}://...")
        return value.rstrip("/")

    @field_validator("webhook_secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        secret = value.get_secret_value()
        body = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not secret.startswith("whsec_") or len(key) < 16:
            # Never echo the value: it is a secret.
            raise ValueError("must be 'whsec_' followed by the base64 of at least 16 bytes")
        return value

    def check(self) -> None:
        """Refuse to start, with one line naming the variable, when the service cannot work."""
        certificate = self.avepoint_certificate_file or self.avepoint_private_key_file
        if certificate and not (self.avepoint_certificate_file and self.avepoint_private_key_file):
            raise ConfigError(
                "AVEPOINT_CERTIFICATE_FILE and AVEPOINT_PRIVATE_KEY_FILE go together: "
                "set both for certificate authentication"
            )
        for name, path in (
            ("AVEPOINT_CERTIFICATE_FILE", self.avepoint_certificate_file),
            ("AVEPOINT_PRIVATE_KEY_FILE", self.avepoint_private_key_file),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: no readable file at {path}")
        secret = self.avepoint_client_secret and self.avepoint_client_secret.get_secret_value()
        if not self.demo and not (self.avepoint_client_id and (secret or certificate)):
            raise ConfigError(
                "AVEPOINT_CLIENT_ID and AVEPOINT_CLIENT_SECRET must be set (or "
                "AVEPOINT_CERTIFICATE_FILE and AVEPOINT_PRIVATE_KEY_FILE for certificate "
                "authentication, or DEMO=true to use the built-in simulator)"
            )
        if self.digest_to and self.smtp_url is None:
            raise ConfigError(
                "SMTP_URL must be set with DIGEST_TO (smtp://user:pass@host:587, "
                "smtps://user:pass@host:465, or smtp://host:25 for a local relay)"
            )
        if self.webhook_urls and self.webhook_secret is None:
            raise ConfigError(
                "WEBHOOK_SECRET must be set with WEBHOOK_URLS "
                "('whsec_' and base64, as Standard Webhooks receivers expect)"
            )

        self.check_psa()

    def check_psa(self) -> None:
        """With `PSA` set, its account must be whole (one line naming what is missing)."""
        if self.psa == "connectwise":
            for name in (
                "connectwise_url",
                "connectwise_company",
                "connectwise_public_key",
                "connectwise_private_key",
                "connectwise_client_id",
            ):
                value = getattr(self, name)
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                if not value:
                    raise ConfigError(
                        f"{name.upper()} must be set with PSA=connectwise (the API member's "
                        "keys and the integration's clientId; see the README's Tickets section)"
                    )

    @property
    def refresh_interval(self) -> float:
        """Seconds between background refreshes of a customer; 0 when they are off."""
        if self.refresh_interval_seconds is not None:
            return self.refresh_interval_seconds
        return 0.8 * self.cache_ttl_seconds

    @property
    def needs_stored_key(self) -> bool:
        """Whether start-up needs a key made with `keys create`: outside DEMO, with no
        API_KEYS, and authentication not turned off on purpose (see `NO_KEY`)."""
        return not (self.demo or self.api_keys or self.auth_disabled)

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys) or not (self.demo or self.auth_disabled)


NO_KEY = (
    "API_KEYS must list at least one key, or a key must be made with "
    "`jobs-gateway keys create NAME` (or set AUTH_DISABLED=true to run without "
    "authentication on purpose)"
)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, or a ConfigError naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigError(f"{variable}: {first['msg']}") from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
