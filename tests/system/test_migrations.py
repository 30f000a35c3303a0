"""`alembic upgrade head` from the repository root creates the schema on both backends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.backends import run_alembic


def test_alembic_cli_migrates_sqlite_and_downgrades(tmp_path: Path) -> None:
    database = tmp_path / "cli.db"
    url = f"sqlite+aiosqlite:///{database}"
    run_alembic(url, "upgrade", "head")
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"users", "sessions"} <= tables
    run_alembic(url, "downgrade", "base")
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert not {"users", "sessions"} & tables
