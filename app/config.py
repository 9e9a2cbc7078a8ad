"""Settings: every variable of CONTRACT.md, read from the environment and a `.env` file.

`get_settings()` reads them once; `create_app(settings)` and the CLI take a `Settings` so tests
build their own. `Settings.check()` holds the start-up refusals: one line naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./data/jobs-gateway.db"


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

    @field_validator("customer_ids", "api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    def check(self) -> None:
        """Refuse to start, with one line naming the variable, when the service cannot work."""
        if not self.demo and not (
            self.avepoint_client_id
            and self.avepoint_client_secret
            and self.avepoint_client_secret.get_secret_value()
        ):
            raise ConfigError(
                "AVEPOINT_CLIENT_ID and AVEPOINT_CLIENT_SECRET must be set "
                "(or set DEMO=true to use the built-in simulator)"
            )
        if not self.demo and not self.api_keys and not self.auth_disabled:
            raise ConfigError(
                "API_KEYS must list at least one key "
                "(or set AUTH_DISABLED=true to run without authentication on purpose)"
            )

    @property
    def refresh_interval(self) -> float:
        """Seconds between background refreshes of a customer; 0 when they are off."""
        if self.refresh_interval_seconds is not None:
            return self.refresh_interval_seconds
        return 0.8 * self.cache_ttl_seconds

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys) or not (self.demo or self.auth_disabled)


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
