"""personal access tokens as records; the PAT in the audit log; purged environment ids

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pat",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(120), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("environments", sa.Text, nullable=True),
        sa.Column("actions", sa.Text, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_index("ix_pat_created_at", "pat", ["created_at"])
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("pat_id", sa.String(200), nullable=True))
    with op.batch_alter_table("environment") as batch:
        batch.add_column(sa.Column("purged_at", TZ, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.drop_column("purged_at")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("pat_id")
    op.drop_index("ix_pat_created_at", table_name="pat")
    op.drop_table("pat")
