"""Typed settings, read once from the environment.

Every setting is defined here and nowhere else, with its documentation: the configuration page of
the documentation site is generated from this class.
A bad value raises `SettingsError` whose message names the environment variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.connection import parse_url
from sqlalchemy.engine import make_url
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
    """Every setting of the service, read from the environment variable of its upper-case name.

    Each field's description is its documentation: the site's configuration page is generated
    from this class (`docs/configuration.md`), so a setting cannot be added undocumented.
    `unset` (json_schema_extra) says what an unset setting means when that is not a value.
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # The service
    environment: Environment = Field(
        default=Environment.DEVELOPMENT,
        description="`development` or `production`. Production logs JSON, sends the session "
        "cookie over HTTPS only, and refuses to start without `SECRET_KEY`, `DATABASE_URL` and "
        "`REDIS_URL`.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs the session and device cookies. Production: required, at least 32 "
        "characters; the same on every instance.",
        json_schema_extra={"unset": "a fixed development key"},
    )
    log_level: str | None = Field(
        default=None,
        description="`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`.",
        json_schema_extra={"unset": "`DEBUG` in development, `INFO` in production"},
    )
    log_health_requests: bool = Field(
        default=False,
        description="Also write `request_finished` lines for `/metrics` and `/api/health*` polls.",
    )
    request_observability: bool = Field(
        default=True,
        description="`false` turns off the per-request middleware (request context, the "
        "`request_finished` line, the `http_*` metrics, `X-Request-ID`): for the overhead "
        "benchmark, not for production.",
    )
    api_docs: bool = Field(
        default=True, description="`false` removes `/openapi.json`, `/docs` and its assets."
    )

    # The database
    data_dir: Path = Field(
        default=Path("var"),
        description="Where the embedded SQLite database and the workers' shared metric files live.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="`postgresql://…` (or `postgresql+asyncpg://…`) or `sqlite+aiosqlite:///…` "
        "(four slashes for an absolute path: `sqlite+aiosqlite:////var/lib/scene-packer/app.db`). "
        "Production must set it (SQLite there only on purpose, for one instance).",
        json_schema_extra={"unset": "SQLite in `DATA_DIR` (development only)"},
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=200, description="Pooled database connections per worker."
    )
    db_max_overflow: int = Field(
        default=5, ge=0, le=200, description="Connections per worker beyond the pool at a peak."
    )
    db_pool_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds a request waits for a pooled connection before a 503.",
    )
    db_connect_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds to open a PostgreSQL connection; also the most a connection the pool "
        "gave up on (cut at a deadline, broken, hung) may take to close, in the background.",
    )
    db_statement_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a statement may run (PostgreSQL's `statement_timeout`, and the "
        "client's).",
    )

    # The cache
    redis_url: SecretStr | None = Field(
        default=None,
        description="`redis://`, `rediss://` or `unix://`; `memory://` for the in-process cache "
        "on purpose. Also holds the rate limits, so that they span workers and instances. "
        "Production must set it.",
        json_schema_extra={"unset": "the in-process cache (development only)"},
    )
    redis_socket_timeout: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds for a Redis connect or reply. After one times out, the rest of that "
        "request and every command for as long again fail at once, as a timeout: a hung Redis "
        "costs a request one timeout, not one per command.",
    )
    cache_key_prefix: str = Field(
        default="scene-packer:",
        max_length=64,
        description="Prefix of every Redis key this service writes.",
    )
    profile_cache_ttl: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="Seconds a cached profile (`/api/auth/me`) lives.",
    )

    # Requests
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Larger request bodies get 413 `body_too_large`.",
    )
    request_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds a request may take in all, whatever it waits on (pool, connect, "
        "statement, Redis, the password-hashing queue): past it the work is cancelled and the "
        "answer is 503 `dependency_timeout` with `Retry-After: 1`. The time a client takes to "
        "send its body is its own: the deadline moves by it; a body still arriving at the "
        "deadline gets 408 `body_timeout`. The per-dependency timeouts matter only when shorter.",
    )
    drain_seconds: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="On SIGTERM or SIGINT under `scene-packer serve`: seconds each worker keeps "
        "accepting while readiness answers 503 `draining`, before it stops accepting (what your "
        "load balancer needs to notice: HAProxy's `inter` × `fall`, an endpoint update).",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or networks whose `X-Forwarded-For` is believed: "
        "the client behind them (the rightmost untrusted hop) is the address the log, the rate "
        "limits and the beacon limits see.",
    )

    # Sign-in
    session_cookie_secure: bool | None = Field(
        default=None,
        description="Send the session cookie over HTTPS only.",
        json_schema_extra={"unset": "`true` in production, `false` in development"},
    )
    session_duration_seconds: int = Field(
        default=7 * 86400,
        ge=60,
        le=366 * 86400,
        description="Lifetime of a session from its login; it ends then however active.",
    )
    session_idle_seconds: int | None = Field(
        default=None,
        ge=60,
        le=366 * 86400,
        description="End a session unused for this long; each use slides it on.",
        json_schema_extra={"unset": "off"},
    )
    session_local_copies: bool = Field(
        default=True,
        description="Each worker answers a signed-in read (`GET /api/auth/me`) it has answered "
        "before from its own copy, kept current through Redis pub/sub; a sign-out then waits "
        "0.2 s so that no copy outlives it (docs/sign-in.md). Needs Redis; `false`: every read "
        "asks Redis.",
    )
    password_min_length: int = Field(
        default=12,
        ge=8,
        le=MAX_PASSWORD_LENGTH,
        description="Shortest new password accepted at registration.",
    )
    password_hash_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Threads per worker that hash passwords (argon2, about 64 MiB each); further "
        "logins queue. With several workers on one machine, workers × threads ≈ cores.",
        json_schema_extra={"unset": "one per CPU the worker may run on"},
    )
    rate_limit_window_seconds: int = Field(
        default=60,
        ge=1,
        le=86400,
        description="Window of the sign-in limits. Each is a token bucket (GCRA): its number of "
        "attempts at once, then one more every window ÷ number seconds; an attempt a limit "
        "refuses costs nothing of that limit's budget.",
    )
    login_limit_per_ip: int = Field(
        default=20, ge=1, description="Login attempts per client address per window."
    )
    login_limit_per_username: int = Field(
        default=5,
        ge=1,
        description="Login attempts per username per window, shared by browsers that never "
        "signed in as that user; each browser that did has a budget of its own (device cookie).",
    )
    register_limit_per_ip: int = Field(
        default=10, ge=1, description="Registrations per client address per window."
    )
    rate_limit_ipv6_prefix: int = Field(
        default=64,
        ge=32,
        le=128,
        description="An IPv6 client counts against the per-address limits with every address of "
        "its network of this many bits (128: the address alone).",
    )

    # Metrics
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, `GET /metrics` requires `Authorization: Bearer <token>`.",
    )
    metrics_track_probes: bool = Field(
        default=False,
        description="Also count `/metrics` and `/api/health*` in the `http_*` metrics.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Where the workers of one server share their metric snapshots.",
        json_schema_extra={"unset": "`DATA_DIR/metrics`"},
    )
    metrics_sync_interval: float = Field(
        default=1.0,
        ge=0.05,
        le=60,
        description="Seconds between a worker's snapshots while other workers run: the most a "
        "scrape lags.",
    )
    active_user_window_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="A user counts in `active_users` for this long after a request.",
    )

    # Health
    health_check_timeout: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="Seconds each health check may take before it counts as `timeout`.",
    )
    health_cache_ttl: float = Field(
        default=1.0,
        ge=0,
        le=300,
        description="Seconds a health result is reused by every poller (one probe per worker "
        "per TTL).",
    )
    health_refresh_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="Interval of the background re-check that keeps the health metrics "
        "current; `0` turns it off.",
    )
    health_critical_checks: Annotated[list[CheckName], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CRITICAL_CHECKS),
        description="Checks that make `/api/health` degraded (503) and `/api/health/ready` fail; "
        "any of `database`, `cache`, `disk`, `memory`.",
    )
    health_disk_path: Path | None = Field(
        default=None,
        description="Filesystem whose free space the disk check reads.",
        json_schema_extra={"unset": "`DATA_DIR`"},
    )
    disk_warning_free_percent: float = Field(
        default=20.0, ge=0, le=100, description="The disk check warns below this free percentage."
    )
    memory_warning_percent: float = Field(
        default=90.0,
        ge=0,
        le=100,
        description="The memory check warns at or above this percentage used.",
    )
    memory_alert_percent: float = Field(
        default=85.0,
        ge=0,
        le=100,
        description="Where the `MemoryHigh` alert fires: an early warning, so below "
        "`MEMORY_WARNING_PERCENT` (the start refuses otherwise). Not read by the service: kept "
        "here so that the two are checked together; the shipped rule uses the default.",
    )

    # Frontend monitoring
    rum_pages: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated page templates (`/books/<int:book_id>`) that beacons may "
        "name; other pages count as `other`. The service's own routes are always known.",
    )
    rum_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins (`https://books.example`) whose beacons are "
        "accepted; others get 403.",
        json_schema_extra={"unset": "any origin"},
    )
    rum_rate_per_second: float = Field(
        default=10.0,
        gt=0,
        le=10_000,
        description="Beacons per second per client address (`POST /api/rum`); over it, 429.",
    )
    rum_burst: int = Field(
        default=50,
        ge=1,
        le=100_000,
        description="Beacons a client address may send at once before the rate applies.",
    )
    rum_demo_enabled: bool | None = Field(
        default=None,
        description="Serve the demo pages under `GET /rum/demo`.",
        json_schema_extra={"unset": "on in development, off in production"},
    )

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
        if url.startswith("postgresql"):
            _readable_by(make_url, url, "several hosts go in the query: ?host=a:5432&host=b:5432")
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
        if url != IN_PROCESS_CACHE:
            _readable_by(parse_url, url, "its options are redis-py's")
        if url.startswith(("redis://", "rediss://")):
            database = urlsplit(url).path.strip("/")
            if database and not database.isdigit():
                raise ValueError("the database after the last / must be a number, such as /0")
        return value

    @field_validator("data_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        """It is created at start when missing: what exists of it must be directories."""
        for existing in (value, *value.absolute().parents):
            if existing.exists():
                if not existing.is_dir():
                    raise ValueError(f"{existing} is not a directory")
                break
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
                    "instance on purpose, DATABASE_URL=sqlite+aiosqlite:////absolute/path.db and "
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


def documented() -> list[tuple[str, str, str]]:
    """(environment variable, default, meaning) of every setting, in the class's order: what
    `scene-packer settings` prints and the documentation's configuration page shows."""
    return [
        (name.upper(), _default_text(field), " ".join((field.description or "").split()))
        for name, field in Settings.model_fields.items()
    ]


def _default_text(field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    value = field.get_default(call_default_factory=True)
    if value is None:
        return f"unset: {extra['unset']}" if extra.get("unset") else "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{','.join(value)}`" if value else str(extra.get("unset") or "empty")
    if isinstance(value, StrEnum):
        return f"`{value.value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (overrides win); SettingsError names a bad one."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _readable_by(parse: Callable[[str], Any], url: str, hint: str) -> None:
    """The URL as the library that connects will read it (SQLAlchemy's `make_url`, redis-py's
    `parse_url`): what it cannot read fails here, naming the setting, not in a traceback at the
    first connect. The message leaves the URL and the library's words out: either may hold the
    password."""
    try:
        parsed = parse(url)
        port = parsed.get("port") if isinstance(parsed, dict) else parsed.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(
            f"cannot be read: its port must be a number from 1 to 65535, its options valid ({hint})"
        )


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
