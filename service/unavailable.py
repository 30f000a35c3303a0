"""The error a lower layer raises when a backing service cannot do what was asked.

It knows nothing of HTTP: `service.http.errors` answers it with 503 `service_unavailable` and its
message (safe to show a client) or, without one, the standard message.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Literal, get_args

# The backing services, and why one failed, as bounded labels (`dependency_errors_total`).
Dependency = Literal["database", "cache"]
DEPENDENCIES: tuple[Dependency, ...] = get_args(Dependency)
# Why a backing service failed, as a bounded label (`dependency_errors_total{reason}`).
FailureReason = Literal["refused", "timeout", "pool_exhausted", "auth", "disk_full", "other"]
FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)
_AUTH_ERRORS = {
    "InvalidPasswordError",
    "InvalidAuthorizationSpecificationError",
    "AuthenticationError",
    "AuthenticationWrongNumberOfArgsError",
}


class DependencyUnavailable(Exception):
    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message  # None: the standard 503 message


def failure_reason(exc: BaseException) -> FailureReason:
    """The cause of a failure, read from the exception and everything it wraps (by class name
    and errno, so this module needs no driver)."""
    for cause in _causes(exc):
        name = type(cause).__name__
        if name == "TimeoutError" and type(cause).__module__.startswith("sqlalchemy"):
            return "pool_exhausted"  # waited DB_POOL_TIMEOUT for a pooled connection
        if isinstance(cause, TimeoutError) or name == "TimeoutError":
            return "timeout"
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "refused"
        if name in _AUTH_ERRORS:
            return "auth"
        if _is_disk_full(cause):
            return "disk_full"
    return "other"


_SQLITE_FULL = 13  # "database or disk is full"
_POSTGRES_DISK_FULL = "53100"


def _is_disk_full(exc: BaseException) -> bool:
    """The database's disk (or the embedded database's file system) has no room for a write."""
    return (
        (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
        or getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
        or getattr(exc, "sqlstate", None) == _POSTGRES_DISK_FULL
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend([current.__cause__, current.__context__, getattr(current, "orig", None)])
