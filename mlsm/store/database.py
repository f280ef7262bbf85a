"""Opening the database: SQLite (the embedded default) or PostgreSQL by URL, with
migrations, and transactions that serialise writers.

    store = Store.open()                 # MLSM_DATABASE_URL, or .mlsm/mlsm.db
    store.migrate()                      # or store.check_migrated() to refuse instead
    with store.write("sync") as session: # one writer at a time for "sync"
        ...
    with store.read() as session:
        ...

SQLite runs in WAL mode (readers never wait for the writer) with foreign keys on; a
write transaction starts with `BEGIN IMMEDIATE`, so two writers queue instead of
failing half-way. On PostgreSQL a write transaction named by `lock` takes a
transaction-scoped advisory lock first, so two controllers (or a webhook during a
poll) apply syncs one after the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mlsm.errors import UserError

__all__ = ["DEFAULT_URL", "DatabaseError", "Store", "database_url"]

DEFAULT_URL = "sqlite:///.mlsm/mlsm.db"
_MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseError(UserError):
    """The database cannot be used as it is: unreachable, or at the wrong revision."""


def database_url(url: str | None = None) -> str:
    """The URL to use: the one given, else `MLSM_DATABASE_URL`, else `.mlsm/mlsm.db`."""
    return url or os.environ.get("MLSM_DATABASE_URL") or DEFAULT_URL


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_xact_lock`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Store:
    """One database, its engine, and sessions on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None, **engine_options: Any) -> Store:
        url = database_url(url)
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise DatabaseError(
                f"database URL '{url}' is not valid; write e.g. sqlite:///.mlsm/mlsm.db or "
                "postgresql+psycopg://user@host:5432/mlsm"
            ) from exc
        if parsed.get_backend_name() == "sqlite":
            return cls(_sqlite_engine(url, parsed.database, engine_options))
        if parsed.get_backend_name() != "postgresql":
            raise DatabaseError(
                f"database '{parsed.get_backend_name()}' is not supported; use SQLite or PostgreSQL"
            )
        if parsed.drivername == "postgresql":  # psycopg 3, not the psycopg2 default
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        engine_options.setdefault("pool_pre_ping", True)
        return cls(create_engine(url, **engine_options))

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; nothing it changes is committed. Objects loaded in it
        stay readable after the block (closed, not expired)."""
        with self._sessions() as session:
            yield session

    @contextlib.contextmanager
    def write(self, lock: str | None = None) -> Iterator[Session]:
        """One transaction, committed when the block ends without an exception.

        On SQLite every write transaction holds the database's write lock from its
        first statement. On PostgreSQL, `lock` names an advisory lock held until the
        commit: writers with the same name run one after the other.
        """
        with self._sessions() as session:
            if self.dialect == "sqlite":
                session.connection(execution_options={"mlsm_immediate": True})
            elif lock is not None:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(lock)})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    # -- migrations ---------------------------------------------------------------

    def _alembic(self, connection: Any) -> Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.attributes["connection"] = connection
        return config

    def revisions(self) -> tuple[str | None, str]:
        """(the database's revision, the newest this mlsm knows)."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory(str(_MIGRATIONS)).get_current_head()
        assert head is not None
        with self._connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        return current, head

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to `revision`, the newest by default (creating it in an empty
        database)."""
        from alembic import command

        with self._connect() as connection, connection.begin():
            if self.dialect == "postgresql":  # two controllers starting at once
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("migrate")}
                )
            command.upgrade(self._alembic(connection), revision)

    def check_migrated(self) -> None:
        """Raise `DatabaseError` unless the schema is at the newest revision."""
        current, head = self.revisions()
        if current != head:
            where = "is empty" if current is None else f"is at revision {current}"
            raise DatabaseError(
                f"the database {where}; this mlsm needs revision {head}. Run "
                "`mlsm-controller migrate`, or start without --no-migrate to migrate on start"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        try:
            connection = self.engine.connect()
        except OperationalError as exc:
            url = self.engine.url.render_as_string(hide_password=True)
            raise DatabaseError(f"cannot connect to the database {url}: {exc.orig}") from exc
        with connection:
            yield connection


def _sqlite_engine(url: str, database: str | None, options: dict[str, Any]) -> Engine:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    options.setdefault("connect_args", {}).setdefault("timeout", 30)
    if database and database != ":memory:":
        # Enough pooled connections for the API's worker threads: a connection made
        # per request (overflow) costs more than the query it serves.
        options.setdefault("pool_size", 20)
        options.setdefault("max_overflow", 20)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN handling is turned off so that ours is the only one
        # (SQLAlchemy's documented recipe for transactional SQLite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("mlsm_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
