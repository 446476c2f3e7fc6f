"""Run the notifier's Alembic migrations programmatically (at start; the scripts ship inside the package).

The notifier keeps its revision in its own table, ``notifier_alembic_version``, so it can share a
PostgreSQL database with the issuer (whose revision is in ``alembic_version``). A database made before
the notifier had migrations (tables created by ``create_all``, columns added at start since) is brought
to the first revision's schema and stamped with it, then upgraded like any other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from shared import migrations

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "notifier_alembic_version"
FIRST_REVISION = "0001"
# pg_advisory_xact_lock key: processes starting together on one database migrate it once.
MIGRATION_LOCK = 727276

# Columns added (by ALTER TABLE at start) to databases made before the first migration, with their DDL.
_LEGACY_COLUMNS = {
    "notifier_subscription": {
        "key_hash": "VARCHAR(64)",
        "owner_token_id": "VARCHAR(100)",
        "owner_generation": "INTEGER DEFAULT 0 NOT NULL",
        "ended_generation": "INTEGER",
    },
}


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _adopt_legacy(connection: Connection, config: Config) -> None:
    """A database from before the migrations: add what ``create_all`` of that time lacked, stamp 0001."""
    names = set(inspect(connection).get_table_names())
    if VERSION_TABLE in names or "notifier_subscription" not in names:
        return
    for table, columns in _LEGACY_COLUMNS.items():
        have = {c["name"] for c in inspect(connection).get_columns(table)}
        for column, ddl in columns.items():
            if column not in have:
                connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
    command.stamp(config, FIRST_REVISION)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``, keeping existing data; one process at a time, on PostgreSQL and
    SQLite (:func:`shared.migrations.upgrade`); a database from before the migrations is adopted under the
    same lock."""
    migrations.upgrade(
        engine, alembic_config(), lock_key=MIGRATION_LOCK, revision=revision, before=_adopt_legacy
    )


def head_revision() -> str:
    """The newest revision the shipped migration scripts define."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no migration scripts in {MIGRATIONS}")
    return head


def current_revision(engine: Engine) -> str | None:
    return migrations.current_revision(engine, VERSION_TABLE)
