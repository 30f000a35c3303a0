"""`alembic upgrade head` from the repository root creates the schema on both backends."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url


async def test_postgres_schema_is_at_head(postgres_url: str) -> None:
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        version = await connection.fetchval("SELECT version_num FROM alembic_version")
        rows = await connection.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_name IN ('users', 'sessions')"
        )
    finally:
        await connection.close()
    columns = {(row["table_name"], row["column_name"]) for row in rows}
    assert version == "0002"
    assert {name for table, name in columns if table == "users"} == {
        "id", "username", "password_hash", "created_at", "last_login_at",
    }  # fmt: skip
    assert {name for table, name in columns if table == "sessions"} == {
        "id", "user_id", "created_at", "last_seen_at", "expires_at",
    }  # fmt: skip
