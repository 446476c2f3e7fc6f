"""shared.migrations: where the SQLite lock file goes, and an upgrade with and without one.

Processes racing for the first migration are in tests/integration/test_migrations_race.py.
"""

from __future__ import annotations

import stat
from pathlib import Path

import sqlalchemy as sa

from services.issuer.adapters import migrate as issuer_migrate
from services.issuer.adapters.db import make_engine as issuer_engine
from services.notifier import migrate as notifier_migrate
from services.notifier.store import make_engine as notifier_engine
from shared.migrations import sqlite_lock_path


def test_the_lock_file_is_beside_a_sqlite_file_only(tmp_path: Path) -> None:
    database = tmp_path / "issuer.db"
    assert sqlite_lock_path(sa.create_engine(f"sqlite:///{database}")) == f"{database}-migrate-lock"
    uri = f"sqlite:///file:{database}?mode=rwc&uri=true"
    assert sqlite_lock_path(sa.create_engine(uri)) == f"{database}-migrate-lock"
    assert sqlite_lock_path(sa.create_engine("sqlite://")) is None
    assert sqlite_lock_path(sa.create_engine("sqlite:///:memory:")) is None
    memory_uri = sa.create_engine("sqlite:///file:m?mode=memory&uri=true", poolclass=sa.StaticPool)
    assert sqlite_lock_path(memory_uri) is None
    assert sqlite_lock_path(sa.create_engine("postgresql+psycopg://u@127.0.0.1/x")) is None


def test_both_services_migrate_one_file_and_leave_a_private_lock_file(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    url = f"sqlite:///{database}"
    for engine, migrate in ((issuer_engine(url), issuer_migrate), (notifier_engine(url), notifier_migrate)):
        try:
            migrate.upgrade(engine)
            migrate.upgrade(engine)  # again: already at head, nothing to do
            assert migrate.current_revision(engine) == migrate.head_revision()
        finally:
            engine.dispose()
    lock = Path(f"{database}-migrate-lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert lock.read_bytes() == b""


def test_a_memory_database_migrates_without_a_lock_file() -> None:
    engine = sa.create_engine("sqlite://", poolclass=sa.StaticPool)
    try:
        notifier_migrate.upgrade(engine)
        assert notifier_migrate.current_revision(engine) == notifier_migrate.head_revision()
    finally:
        engine.dispose()
