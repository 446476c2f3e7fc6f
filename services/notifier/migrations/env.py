"""Alembic environment of the notifier; run programmatically by ``services.notifier.migrate``.

``target_metadata`` is the notifier's tables alone, so ``alembic check`` / autogenerate compare the
migrations with :mod:`services.notifier.tables`; tables of other services sharing the database are ignored.
"""

from typing import Any

from alembic import context

from services.notifier.migrate import VERSION_TABLE
from services.notifier.tables import notifier_metadata

target_metadata = notifier_metadata()


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only the notifier's own tables (and what belongs to them) are compared."""
    return type_ != "table" or name in target_metadata.tables


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=True,
    version_table=VERSION_TABLE,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
