"""notices: a scheduled rotation's warnings the issuer asked for (idempotent by notice id)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifier_notice",
        sa.Column("environment_id", sa.String(200), primary_key=True),
        sa.Column("notice_id", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("forced_at", sa.Float, nullable=True),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.Column("accepted_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("notifier_notice")
