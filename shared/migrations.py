"""Run a service's Alembic migrations once, however many processes start on one database together.

Two issuer replicas, the issuer and ``streamtoken admin ...``, or several notifiers may reach the first
migration of a fresh database at the same moment; without a lock each sees no version table and creates the
tables, and all but one fail (``table ... already exists``, ``database is locked``). :func:`upgrade`
serialises them, and each reads the version again once it holds the lock (Alembic's upgrade reads it in the
locked transaction), so the later ones find the schema at the revision and do nothing:

- PostgreSQL: ``pg_advisory_xact_lock(lock_key)`` in the migration transaction; it is released by the
  commit (or the rollback), never left behind by a process that died.
- SQLite: an exclusive ``flock`` on a lock file beside the database (``<file>-migrate-lock``, next to
  SQLite's own ``-wal``), taken before the migration connects: the first connection to a fresh file
  switches it to WAL, which two connections at once cannot both do (one gets ``database is locked`` at
  once, whatever the busy timeout). Then a ``BEGIN IMMEDIATE`` transaction around the whole upgrade, so a
  writer that is not migrating (another service sharing the file) cannot slip between its reads and its
  DDL either, and a migration cut short leaves nothing half done. The kernel drops the ``flock`` when the
  process ends. A memory database has no file and takes no lock file.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, Engine

LOCK_SUFFIX = "-migrate-lock"


def current_revision(engine: Engine, version_table: str = "alembic_version") -> str | None:
    """The revision recorded in ``version_table`` (None: an empty database)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        return context.get_current_revision()


def sqlite_lock_path(engine: Engine) -> str | None:
    """The lock file of a SQLite file database (None: not SQLite, or a memory database)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if database.startswith("file:"):  # a URI filename (``?uri=true``): its path
        database = database[len("file:") :].split("?", 1)[0]
    if database in ("", ":memory:") or engine.url.query.get("mode") == "memory":
        return None
    return os.path.abspath(database) + LOCK_SUFFIX


@contextmanager
def _file_lock(path: str) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError:  # made by another user (0600): flock works on a read-only descriptor too
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the process migrating now
        yield
    finally:
        os.close(fd)  # releases the lock


def _sqlite_in_transaction(connection: Connection) -> bool:
    return bool(getattr(connection.connection.dbapi_connection, "in_transaction", False))


def upgrade(
    engine: Engine,
    config: Config,
    *,
    lock_key: int,
    revision: str = "head",
    before: Callable[[Connection, Config], None] | None = None,
) -> None:
    """Bring the schema of ``config``'s migrations to ``revision``, one process at a time.

    ``lock_key`` is the service's PostgreSQL advisory lock; ``before`` runs in the locked transaction
    ahead of the upgrade (the notifier adopts a database made before its migrations there)."""
    lock_path = sqlite_lock_path(engine)
    file_lock: AbstractContextManager[None] = _file_lock(lock_path) if lock_path else nullcontext()
    with file_lock, engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({int(lock_key)})")
        elif engine.dialect.name == "sqlite" and not _sqlite_in_transaction(connection):
            # An engine whose own "begin" hook did not already start one (the issuer's issues BEGIN
            # IMMEDIATE; pysqlite's default would run the DDL outside any transaction).
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        config.attributes["connection"] = connection
        if before is not None:
            before(connection, config)
        command.upgrade(config, revision)
