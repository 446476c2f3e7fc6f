"""the page's login sessions: a cookie names one, the database keeps only its hash and its PAT

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ui_session",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("pat_jti", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("last_seen_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(200), nullable=True),
    )
    op.create_index("ix_ui_session_pat_jti", "ui_session", ["pat_jti"])
    op.create_index("ix_ui_session_expires_at", "ui_session", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_ui_session_expires_at", table_name="ui_session")
    op.drop_index("ix_ui_session_pat_jti", table_name="ui_session")
    op.drop_table("ui_session")
