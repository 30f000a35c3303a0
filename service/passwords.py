"""Password hashing with argon2, off the event loop (a hash costs tens of milliseconds of CPU).

Hashes run in their own thread pool, one thread per CPU this process may use: more hashes at
once would only share the same cores (each slower, each holding argon2's 64 MiB), and a burst of
logins must not occupy asyncio's default pool, where the health checks' disk and memory probes
run under their timeouts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_T = TypeVar("_T")

_hasher = PasswordHasher()
# Verified when the username is unknown, so both paths cost the same and timing reveals nothing.
_DUMMY_HASH = _hasher.hash("not-a-real-password-only-for-timing")
HASHING_THREADS = (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)
_pool = ThreadPoolExecutor(max_workers=HASHING_THREADS, thread_name_prefix="password-hash")


async def hash_password(password: str) -> str:
    return await _in_pool(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    return await _in_pool(_verify, password_hash or _DUMMY_HASH, password)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _in_pool(function: Callable[..., _T], *args: str) -> asyncio.Future[_T]:
    return asyncio.get_running_loop().run_in_executor(_pool, function, *args)
