"""usage per token (folded from the usage topic) and per-environment rotation schedules (issue 12)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "token_usage",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("environment_id", sa.String(98), nullable=False, index=True),
        sa.Column("last_used_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "token_usage_client",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("client_key", sa.String(64), primary_key=True),
        sa.Column("environment_id", sa.String(98), nullable=False, index=True),
        sa.Column("address", sa.String(100), nullable=False),
        sa.Column("user_agent", sa.String(300), nullable=False),
        sa.Column("deployment_id", sa.String(100), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("last_seen_at", TZ, nullable=False, index=True),
        sa.Column("uses", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "rotation_schedule",
        sa.Column("environment_id", sa.String(98), primary_key=True),
        sa.Column("every_days", sa.Float, nullable=False),
        sa.Column("unused_window_seconds", sa.Integer, nullable=False),
        sa.Column("deadline_days", sa.Float, nullable=True),
        sa.Column("warn_before_seconds", sa.Integer, nullable=False),
        sa.Column("grace_period_seconds", sa.Integer, nullable=False),
        sa.Column("warned_generation", sa.Integer, nullable=False),
        sa.Column("last_outcome", sa.String(200), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rotation_schedule")
    op.drop_table("token_usage_client")
    op.drop_table("token_usage")
