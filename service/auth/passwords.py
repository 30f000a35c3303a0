"""Password hashing with argon2, off the event loop (a hash costs tens of milliseconds of CPU).

Hashes run in the app's own thread pool, by default one thread per CPU this process may use
(`PASSWORD_HASH_THREADS`): more hashes at once would only share the same cores (each slower, each
holding argon2's 64 MiB), and a burst of logins must not occupy asyncio's default pool, where the
health checks' disk and memory probes run under their timeouts.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from quart import Quart

from service.auth.password_policy import Weakness, password_weakness
from service.observability.context import waiting_on
from service.settings import Settings

_T = TypeVar("_T")

_hasher = PasswordHasher()


class Passwords:
    """Hashing, verifying and judging passwords in the app's own thread pool (its threads start
    with the first hash)."""

    def __init__(self, settings: Settings) -> None:
        self.pool = ThreadPoolExecutor(
            max_workers=settings.effective_password_hash_threads,
            thread_name_prefix="password-hash",
        )

    async def hash(self, password: str) -> str:
        with waiting_on("password_hashing"):
            return await self._in_pool(_hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password against a user's hash; with None (no such user), against a dummy
        hash with the current parameters, so that both answers take the same argon2 work."""
        with waiting_on("password_hashing"):
            return await self._in_pool(_verify, password_hash, password)

    async def check_new(self, password: str, username: str, min_length: int) -> Weakness | None:
        """The password policy's verdict, computed in the pool (zxcvbn is CPU work too)."""
        with waiting_on("password_hashing"):
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, password_weakness, password, username, min_length
            )

    def _in_pool(self, function: Callable[..., _T], *args: str | None) -> asyncio.Future[_T]:
        return asyncio.get_running_loop().run_in_executor(self.pool, function, *args)


def init_passwords(app: Quart, passwords: Passwords) -> None:
    @app.after_serving
    async def stop_hashing() -> None:
        # Hashes already queued still finish; nothing new can be queued once serving stops.
        passwords.pool.shutdown(wait=False)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def _verify(password_hash: str | None, password: str) -> bool:
    # The dummy is made by the first verification of either kind, so that the first login of a
    # worker costs the same extra hash whether or not its username exists.
    dummy = _dummy_hash()
    try:
        return _hasher.verify(password_hash or dummy, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash() -> str:
    # Made on first use (in a hashing thread), not at import: one hash a worker, and with the
    # parameters the hasher has then. Two threads racing here would both hash; harmless.
    return _hasher.hash(secrets.token_urlsafe(16))
