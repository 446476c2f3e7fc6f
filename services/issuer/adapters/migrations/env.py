"""Alembic environment of the issuer; run programmatically by ``services.issuer.adapters.migrate``.

``target_metadata`` is the issuer's tables alone (those of ``services.issuer.adapters.db``; SQLModel's
metadata also holds the notifier's when both are imported), so autogenerate and ``alembic check`` compare
the migrations with the models; tables of other services sharing the database are ignored.
"""

from typing import Any

from alembic import context
from sqlalchemy import MetaData, String, Table
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from services.issuer.adapters import db

target_metadata = MetaData()
for mapper in SQLModel._sa_registry.mappers:
    if mapper.class_.__module__ == db.__name__ and isinstance(mapper.local_table, Table):
        mapper.local_table.to_metadata(target_metadata)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only the issuer's own tables (and what belongs to them) are compared."""
    return type_ != "table" or name in target_metadata.tables


def compare_type(
    context: Any, inspected: Any, metadata: Any, inspected_type: Any, metadata_type: Any
) -> bool | None:
    """A ``str`` field without ``max_length`` (SQLModel's length-less ``AutoString``) is the migrations'
    ``TEXT``: the same storage on SQLite and PostgreSQL. Anything else: Alembic's own comparison."""
    lengthless = isinstance(metadata_type, AutoString) and metadata_type.length is None
    if lengthless and isinstance(inspected_type, String) and inspected_type.length is None:
        return False
    return None


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=True,
    include_name=include_name,
    compare_type=compare_type,
)
with context.begin_transaction():
    context.run_migrations()
