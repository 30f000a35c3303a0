"""Typed settings, read once from the environment.

Every setting is defined here and nowhere else; README.md's settings table mirrors this class.
A bad value raises `SettingsError` whose message names the environment variable.
"""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from werkzeug.routing import Map, Rule

# REDIS_URL's value for the in-process cache, said explicitly (production must say something).
IN_PROCESS_CACHE = "memory://"
DEVELOPMENT_SECRET_KEY = "development-only-secret-key-do-not-use-in-production"
MIN_PRODUCTION_SECRET_KEY_LENGTH = 32
CheckName = Literal["database", "cache", "disk", "memory"]
HEALTH_CHECKS: tuple[CheckName, ...] = get_args(CheckName)
DEFAULT_CRITICAL_CHECKS: tuple[CheckName, ...] = ("database", "cache")
MAX_PASSWORD_LENGTH = 256


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """Raised when the environment holds an invalid setting; the message names it."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(
            "invalid configuration: " + "; ".join(f"{name}: {text}" for name, text in problems)
        )
        self.problems = problems  # (environment variable, what is wrong with it)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    environment: Environment = Environment.DEVELOPMENT
    log_level: str | None = Field(
        default=None, description="DEBUG, INFO, WARNING, ERROR; default DEBUG in development"
    )
    secret_key: SecretStr | None = None
    log_health_requests: bool = False
    request_observability: bool = True
    api_docs: bool = True

    data_dir: Path = Path("var")
    database_url: SecretStr | None = None
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    db_pool_timeout: float = Field(default=5.0, gt=0, le=120)
    db_connect_timeout: float = Field(default=5.0, gt=0, le=120)
    db_statement_timeout: float = Field(default=10.0, gt=0, le=3600)

    redis_url: SecretStr | None = None
    redis_socket_timeout: float = Field(default=1.0, gt=0, le=60)
    cache_key_prefix: str = Field(default="scene-packer:", max_length=64)
    profile_cache_ttl: int = Field(default=300, ge=1, le=86400)

    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
    request_timeout: float = Field(default=5.0, gt=0, le=300)
    drain_seconds: float = Field(default=0.0, ge=0, le=600)
    session_cookie_secure: bool | None = None
    session_duration_seconds: int = Field(default=7 * 86400, ge=60, le=366 * 86400)
    session_idle_seconds: int | None = Field(default=None, ge=60, le=366 * 86400)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    metrics_token: SecretStr | None = None
    metrics_track_probes: bool = False
    metrics_dir: Path | None = None
    metrics_sync_interval: float = Field(default=1.0, ge=0.05, le=60)
    active_user_window_seconds: int = Field(default=300, ge=10, le=86400)

    health_check_timeout: float = Field(default=0.5, gt=0, le=30)
    health_cache_ttl: float = Field(default=1.0, ge=0, le=300)
    health_refresh_seconds: float = Field(default=5.0, ge=0, le=3600)
    health_critical_checks: Annotated[list[CheckName], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CRITICAL_CHECKS)
    )
    health_disk_path: Path | None = None
    disk_warning_free_percent: float = Field(default=20.0, ge=0, le=100)
    memory_warning_percent: float = Field(default=90.0, ge=0, le=100)
    # Not read by the service: the threshold of the MemoryHigh alert (monitoring/), an early
    # warning below the health check's, kept here so that the two are checked together.
    memory_alert_percent: float = Field(default=85.0, ge=0, le=100)

    rum_pages: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rum_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rum_rate_per_second: float = Field(default=10.0, gt=0, le=10_000)
    rum_burst: int = Field(default=50, ge=1, le=100_000)
    rum_demo_enabled: bool | None = None

    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86400)
    login_limit_per_ip: int = Field(default=20, ge=1)
    login_limit_per_username: int = Field(default=5, ge=1)
    register_limit_per_ip: int = Field(default=10, ge=1)
    rate_limit_ipv6_prefix: int = Field(default=64, ge=32, le=128)
    password_min_length: int = Field(default=12, ge=8, le=MAX_PASSWORD_LENGTH)
    password_hash_threads: int | None = Field(default=None, ge=1, le=256)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = value.get_secret_value()
        if url.startswith(("postgres://", "postgresql://")):
            url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "must start with postgresql://, postgresql+asyncpg:// or sqlite+aiosqlite://"
            )
        return SecretStr(url)

    @field_validator("session_idle_seconds", mode="before")
    @classmethod
    def _empty_idle_is_off(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("metrics_token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("redis_url")
    @classmethod
    def _supported_redis(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = value.get_secret_value()
        if url != IN_PROCESS_CACHE and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"must start with redis://, rediss:// or unix://, or be {IN_PROCESS_CACHE}"
            )
        return value

    @field_validator(
        "trusted_proxies",
        "health_critical_checks",
        "rum_pages",
        "rum_allowed_origins",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP address or network") from None
        return value

    @field_validator("health_critical_checks", mode="before")
    @classmethod
    def _known_checks(cls, value: Any) -> Any:
        # Before pydantic's own Literal check, for a message that lists the choices.
        value = _split_commas(value)
        unknown = sorted(set(value) - set(HEALTH_CHECKS))
        if unknown:
            raise ValueError(f"unknown checks {unknown}; choose from {', '.join(HEALTH_CHECKS)}")
        return value

    @field_validator("rum_pages")
    @classmethod
    def _page_templates(cls, value: list[str]) -> list[str]:
        for page in value:
            if not page.startswith("/"):
                raise ValueError(f"{page!r} is not a path template such as /books/<int:book_id>")
            try:
                Map([Rule(page)])
            except ValueError as exc:
                raise ValueError(f"{page!r} is not a valid path template: {exc}") from None
        return value

    @field_validator("rum_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        value = [origin.rstrip("/") for origin in value]
        for origin in value:
            if not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin such as https://books.example")
        return value

    @model_validator(mode="after")
    def _memory_alert_before_the_check(self) -> Settings:
        if self.memory_alert_percent >= self.memory_warning_percent:
            raise ValueError(
                f"MEMORY_ALERT_PERCENT: {self.memory_alert_percent:g} must be below "
                f"MEMORY_WARNING_PERCENT ({self.memory_warning_percent:g}): the alert warns "
                "before the health check degrades"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_secret(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            key = self.secret_key.get_secret_value() if self.secret_key else ""
            if len(key) < MIN_PRODUCTION_SECRET_KEY_LENGTH:
                raise ValueError(
                    "SECRET_KEY: production needs an explicit SECRET_KEY of at least "
                    f"{MIN_PRODUCTION_SECRET_KEY_LENGTH} characters"
                )
        return self

    @model_validator(mode="after")
    def _production_names_its_backends(self) -> Settings:
        """The embedded defaults (SQLite under DATA_DIR, a cache in each process) lose every
        user with the container and disagree between instances: production says what it uses,
        even when that is SQLite (`sqlite+aiosqlite:///…`) or the in-process cache (`memory://`)."""
        if self.environment is Environment.PRODUCTION:
            unset = [
                name
                for name, value in (
                    ("DATABASE_URL", self.database_url),
                    ("REDIS_URL", self.redis_url),
                )
                if value is None
            ]
            if unset:
                raise ValueError(
                    f"{', '.join(unset)}: production needs "
                    f"{'them' if len(unset) > 1 else 'it'} set (PostgreSQL and Redis; for one "
                    "instance on purpose, DATABASE_URL=sqlite+aiosqlite:///path/to/file.db and "
                    f"REDIS_URL={IN_PROCESS_CACHE})"
                )
        return self

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults, by environment name; secrets as
        `[REDACTED]` (URLs keep their scheme and host, their password masked by the log)."""
        changed: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value == field.get_default(call_default_factory=True):
                continue
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = secret if name.endswith("_url") else "[REDACTED]"
            elif isinstance(value, Path | StrEnum):
                value = str(value)
            changed[name.upper()] = value
        return changed

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def effective_log_level(self) -> str:
        return self.log_level or ("INFO" if self.is_production else "DEBUG")

    @property
    def effective_secret_key(self) -> str:
        return self.secret_key.get_secret_value() if self.secret_key else DEVELOPMENT_SECRET_KEY

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{self.data_dir / 'scene_packer.db'}"

    @property
    def effective_password_hash_threads(self) -> int:
        """PASSWORD_HASH_THREADS, or one per CPU this process may run on (its affinity)."""
        if self.password_hash_threads is not None:
            return self.password_hash_threads
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1

    @property
    def uses_embedded_database(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def uses_redis(self) -> bool:
        return self.redis_url is not None and self.redis_url.get_secret_value() != IN_PROCESS_CACHE

    @property
    def rum_demo(self) -> bool:
        return not self.is_production if self.rum_demo_enabled is None else self.rum_demo_enabled

    @property
    def cookie_secure(self) -> bool:
        if self.session_cookie_secure is None:
            return self.is_production
        return self.session_cookie_secure


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (overrides win); SettingsError names a bad one."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _split_commas(value: Any) -> Any:
    """A list setting may be given as comma-separated text in the environment."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _describe(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        if not name:  # a check across settings names its setting first: "SECRET_KEY: ..."
            name, _, message = message.partition(": ")
        problems.append((name, message))
    return problems
