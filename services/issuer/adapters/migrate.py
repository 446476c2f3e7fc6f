"""Run the issuer's Alembic migrations programmatically (at start; the scripts ship inside the package)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy.engine import Engine

from shared import migrations

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key: processes starting together on one database migrate it once.
MIGRATION_LOCK = 727274


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``, keeping existing data; one process at a time (replicas, the
    admin commands), on PostgreSQL and SQLite: :func:`shared.migrations.upgrade`."""
    migrations.upgrade(engine, alembic_config(), lock_key=MIGRATION_LOCK, revision=revision)


def head_revision() -> str:
    """The newest revision the shipped migration scripts define."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no migration scripts in {MIGRATIONS}")
    return head


def current_revision(engine: Engine) -> str | None:
    return migrations.current_revision(engine)
