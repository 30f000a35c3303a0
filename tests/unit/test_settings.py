"""Settings a newcomer gets wrong are refused at start, naming the variable, never echoing a URL
(it may hold a password); the ones production must name are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("database_url", "postgresql://app:s3cret@db:abc/x", "port must be a number"),
        ("database_url", "postgresql://app:s3cret@db:99999/x", "port must be a number"),
        ("database_url", "postgresql://app:s3cret@db:/x", "port must be a number"),
        ("database_url", "postgresql://app:s3cret@db:0/x", "port must be a number"),
        ("database_url", "postgresql://app:s3cret@a:5432,b:5432/x", "?host=a:5432&host=b:5432"),
        ("redis_url", "redis://:s3cret@cache:abc/0", "port must be a number"),
        ("redis_url", "redis://:s3cret@cache:6379/0?socket_timeout=abc", "options valid"),
        ("redis_url", "redis://:s3cret@cache:6379/foo", "must be a number, such as /0"),
        ("redis_url", "http://cache:6379/0", "must start with redis://"),
    ],
)
def test_a_malformed_url_is_refused_without_repeating_it(
    setting: str, value: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(**{setting: value})
    ((name, message),) = refused.value.problems
    assert name == setting.upper() and problem in message
    assert "s3cret" not in str(refused.value.problems)


def test_a_data_dir_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SettingsError) as refused:
        load_settings(data_dir=tmp_path / "a-file" / "data")
    ((name, message),) = refused.value.problems
    assert name == "DATA_DIR" and "is not a directory" in message
    assert load_settings(data_dir=tmp_path / "new" / "data").data_dir == tmp_path / "new" / "data"


def test_production_may_name_the_embedded_backends(tmp_path: Path) -> None:
    settings = load_settings(
        environment="production",
        secret_key="x" * 40,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/app.db",
        redis_url="memory://",
    )
    assert settings.uses_embedded_database and not settings.uses_redis
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path}/app.db"


def test_several_database_hosts_in_the_query_are_read() -> None:
    """SQLAlchemy's form for asyncpg's failover list (the comma form it cannot read is refused)."""
    url = "postgresql://app@/app?host=db-a:5432&host=db-b:5432&target_session_attrs=read-write"
    assert load_settings(database_url=url).database_url is not None
