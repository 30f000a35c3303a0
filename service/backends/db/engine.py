"""Engine set-up: created when the app starts serving, disposed when it stops.

Every engine hides bound parameters from its error messages (`hide_parameters`): they carry
password hashes and other user data, and a failed statement's message ends up in a log.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from quart import Quart
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.util.concurrency import in_greenlet

from service.observability.context import waiting_on
from service.settings import Settings
from service.unavailable import DependencyUnavailable, FailureReason, failure_reason

if TYPE_CHECKING:
    from alembic.config import Config

# The top-level alembic/ folder, reached through the package (`migrations` links to it in a
# checkout; the wheel holds a copy): `scene-packer migrate` works from an installed wheel.
MIGRATIONS_DIR = Path(str(files(__package__) / "migrations"))


class DatabaseUnavailable(DependencyUnavailable):
    """The database could not be reached (down, hung, or every pooled connection busy)."""


class Database:
    """The app's database: built by the composition root and handed to each part that needs it;
    its engine is opened when the app starts serving (`init_db`) and disposed when it stops."""

    def __init__(
        self,
        settings: Settings,
        instrument: Callable[[AsyncEngine], None] | None = None,
        failed: Callable[[FailureReason], None] | None = None,  # told each outage's cause
    ) -> None:
        self.settings = settings
        self.instrument = instrument
        self.failed = failed
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "the database opens when the app starts serving"
        return self._engine

    async def open(self) -> None:
        engine = create_engine(self.settings)
        if self.instrument is not None:
            self.instrument(engine)
        if self.settings.uses_embedded_database:
            await migrate_embedded(engine, self.settings.data_dir)
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine, self._sessions = self._engine, None, None
            await dispose(engine)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session committed on success; a database that cannot be reached raises
        DatabaseUnavailable (the HTTP layer answers 503), never a hang."""
        assert self._sessions is not None, "the database opens when the app starts serving"
        try:
            with waiting_on("database"):
                async with self._sessions.begin() as session:
                    yield session
        except Exception as exc:
            if is_unavailable(exc):
                if self.failed is not None:
                    self.failed(failure_reason(exc))
                raise DatabaseUnavailable() from exc
            raise


def is_unavailable(exc: BaseException) -> bool:
    """True when the failure means "the database cannot be reached", not a bad query."""
    if isinstance(
        exc, OperationalError | InterfaceError | PoolTimeoutError | OSError | TimeoutError
    ):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@dataclass(frozen=True)
class SchemaRevisions:
    """What the code's migrations know: their head, and every revision on the way to it."""

    head: str
    known: frozenset[str]

    def is_behind(self, revision: str | None) -> bool:
        """True for a database never migrated, or at a revision older than the head. A revision
        the code does not know is newer (a later release migrated already): not behind."""
        return revision is None or (revision != self.head and revision in self.known)


def schema_revisions() -> SchemaRevisions:
    """Read the migration scripts (file work: call it off the event loop, once)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    head = script.get_current_head()
    assert head is not None, "alembic/versions holds no migration"
    return SchemaRevisions(head, frozenset(rev.revision for rev in script.walk_revisions()))


async def select_schema_revision(connection: AsyncConnection) -> str | None:
    """The database's alembic revision; None when it was never migrated."""
    try:
        result = await connection.execute(text("SELECT version_num FROM alembic_version"))
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_TABLE:
            return None
        raise
    revision: str | None = result.scalar_one_or_none()
    return revision


_UNDEFINED_TABLE = "42P01"


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.effective_database_url
    pool: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout,
    }
    if settings.uses_embedded_database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            hide_parameters=True,
            **pool,
            connect_args={"timeout": settings.db_statement_timeout},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        hide_parameters=True,
        **pool,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": settings.db_statement_timeout,
            "server_settings": {
                "application_name": "scene-packer",
                "statement_timeout": str(int(settings.db_statement_timeout * 1000)),
            },
        },
    )
    _close_in_background(engine, settings.db_connect_timeout)
    return engine


def create_probe_engine(settings: Settings) -> AsyncEngine:
    """A separate, tiny engine for health probes: never queued behind an exhausted request pool,
    and bounded by the health check timeout."""
    url = settings.effective_database_url
    timeout = settings.health_check_timeout
    if settings.uses_embedded_database:
        return create_async_engine(
            url, hide_parameters=True, poolclass=NullPool, connect_args={"timeout": timeout}
        )
    engine = create_async_engine(
        url,
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
        pool_timeout=timeout,
        pool_pre_ping=False,
        connect_args={
            "timeout": timeout,
            "command_timeout": timeout,
            "server_settings": {"application_name": "scene-packer-health"},
        },
    )
    _close_in_background(engine, timeout)
    return engine


class _BackgroundCloser:
    """Closes the connections a pool gives up on (a request cancelled mid-query at its deadline,
    a broken or hung link) in the background. SQLAlchemy closes them gracefully in the request's
    own time: the server is asked to cancel the running statement, told goodbye and given 2 s to
    answer; when the server is the thing that hung, the 503 went out REQUEST_TIMEOUT + 2 s after
    the request arrived. Here the same close runs as a task of its own, bounded by `timeout`
    (then asyncpg drops the socket), and the request answers at once."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.closing: set[asyncio.Task[None]] = set()

    def terminate(self, dbapi_connection: Any) -> None:
        driver = dbapi_connection.driver_connection
        if not in_greenlet():  # the garbage collector's cleanup: nothing may wait
            driver.terminate()
            return
        task = asyncio.get_running_loop().create_task(self._close(driver))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    async def _close(self, driver: Any) -> None:
        # asyncpg aborts the connection itself when the graceful close fails or times out.
        with suppress(Exception):
            await driver.close(timeout=self.timeout)


_closers: WeakKeyDictionary[Engine, _BackgroundCloser] = WeakKeyDictionary()


def _close_in_background(engine: AsyncEngine, timeout: float) -> None:
    closer = _closers[engine.sync_engine] = _BackgroundCloser(timeout)
    engine.sync_engine.dialect.do_terminate = closer.terminate  # type: ignore[method-assign]


async def dispose(engine: AsyncEngine) -> None:
    """Close the engine's pool, and wait for the connections it gave up on to finish closing."""
    await engine.dispose()
    closer = _closers.get(engine.sync_engine)
    if closer is not None:
        await asyncio.gather(*closer.closing, return_exceptions=True)


def init_db(app: Quart, database: Database) -> None:
    """Open `database` when `app` starts serving, close it when it stops."""
    app.before_serving(database.open)
    app.after_serving(database.close)


async def migrate_embedded(engine: AsyncEngine, data_dir: Path) -> None:
    """Bring the embedded SQLite schema to head; a file lock keeps several workers in turn."""
    lock_path = data_dir / ".migrate.lock"
    with lock_path.open("w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            await upgrade_to_head(engine)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def upgrade_to_head(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """`alembic upgrade head` in one transaction: the revisions before and after."""
    async with engine.begin() as connection:
        before = await connection.run_sync(_current_revision)
        await connection.run_sync(_upgrade_to_head)
        return before, await connection.run_sync(_current_revision)


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command

    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _alembic_config() -> Config:
    """The package's migrations, without an alembic.ini (pyproject.toml holds alembic's)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
