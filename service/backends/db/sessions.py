"""Data functions for sign-in sessions: plain async functions taking the session first.

`session_id` is always the stored form (the SHA-256 of the cookie's token), never the token.
A session is live while `now < expires_at` and, when an idle limit is set, while
`last_seen_at > idle_cutoff` (now minus the idle limit).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.backends.db.models import LoginSession


async def insert_session(
    session: AsyncSession, session_id: str, user_id: int, now: datetime, expires_at: datetime
) -> None:
    session.add(
        LoginSession(
            id=session_id, user_id=user_id, created_at=now, last_seen_at=now, expires_at=expires_at
        )
    )
    await session.flush()


async def select_session(session: AsyncSession, session_id: str) -> LoginSession | None:
    return await session.get(LoginSession, session_id)


async def touch_session(session: AsyncSession, session_id: str, now: datetime) -> None:
    await session.execute(
        update(LoginSession).where(LoginSession.id == session_id).values(last_seen_at=now)
    )


async def delete_session(session: AsyncSession, session_id: str) -> int | None:
    """End one session; the user it belonged to, or None if there was none."""
    result = await session.execute(
        delete(LoginSession).where(LoginSession.id == session_id).returning(LoginSession.user_id)
    )
    return result.scalar_one_or_none()


async def select_user_session_ids(session: AsyncSession, user_id: int) -> list[str]:
    result = await session.execute(select(LoginSession.id).where(LoginSession.user_id == user_id))
    return list(result.scalars())


async def delete_user_sessions(session: AsyncSession, user_id: int) -> list[str]:
    """End every session of a user; the ids of those ended."""
    result = await session.execute(
        delete(LoginSession).where(LoginSession.user_id == user_id).returning(LoginSession.id)
    )
    return list(result.scalars())


async def delete_expired_sessions(
    session: AsyncSession, now: datetime, idle_cutoff: datetime | None, limit: int
) -> int:
    """Delete at most `limit` expired sessions (a bounded statement, however long the backlog);
    how many were deleted."""
    expired: ColumnElement[bool] = LoginSession.expires_at <= now
    if idle_cutoff is not None:
        expired = or_(expired, LoginSession.last_seen_at <= idle_cutoff)
    batch = select(LoginSession.id).where(expired).limit(limit).scalar_subquery()
    result = await session.execute(delete(LoginSession).where(LoginSession.id.in_(batch)))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def count_live_sessions(
    session: AsyncSession, now: datetime, idle_cutoff: datetime | None
) -> int:
    query = select(func.count()).select_from(LoginSession).where(LoginSession.expires_at > now)
    if idle_cutoff is not None:
        query = query.where(LoginSession.last_seen_at > idle_cutoff)
    return int((await session.execute(query)).scalar_one())
