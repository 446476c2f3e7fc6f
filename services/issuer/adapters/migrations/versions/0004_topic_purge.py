"""purging an environment id deletes its topics: the deletion still to be done at the broker

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.add_column(sa.Column("topic_purge_requested_at", TZ, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.drop_column("topic_purge_requested_at")
