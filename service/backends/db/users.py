"""Data functions for users: plain async functions taking the session first."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.backends.db.models import User

# 3–32 of A-Z a-z 0-9 _ . - ; stored lower-case.
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"


class UsernameTaken(Exception):
    pass


async def select_user_by_username(session: AsyncSession, username: str) -> User | None:
    result = await session.execute(select(User).where(User.username == username))
    return result.scalar_one_or_none()


async def select_user(session: AsyncSession, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def insert_user(session: AsyncSession, username: str, password_hash: str) -> User:
    user = User(username=username, password_hash=password_hash, created_at=datetime.now(UTC))
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise UsernameTaken(username) from None
    return user


async def update_login(session: AsyncSession, user_id: int, password_hash: str | None) -> None:
    """Record a successful login, replacing the hash when its parameters were upgraded."""
    values: dict[str, object] = {"last_login_at": datetime.now(UTC)}
    if password_hash is not None:
        values["password_hash"] = password_hash
    await session.execute(update(User).where(User.id == user_id).values(**values))
