"""initial schema: subscriptions, deliveries, rotations seen, environments' current generation

The schema ``create_all`` made before the notifier had migrations (with the ownership columns that were
added at start since); such databases are stamped with this revision by ``services.notifier.migrate``.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifier_subscription",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("environment_id", sa.String(200), nullable=False),
        sa.Column("deployment_id", sa.String(200), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.String(200), nullable=True),
        sa.Column("last_notified_generation", sa.Integer, nullable=False),
        sa.Column("acked_generation", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=True),
        sa.Column("owner_token_id", sa.String(100), nullable=True),
        sa.Column("owner_generation", sa.Integer, nullable=False),
        sa.Column("ended_generation", sa.Integer, nullable=True),
        sa.UniqueConstraint("environment_id", "deployment_id", name="uq_notifier_sub_deployment"),
    )
    op.create_index("ix_notifier_subscription_environment_id", "notifier_subscription", ["environment_id"])
    op.create_table(
        "notifier_delivery",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(40), nullable=False),
        sa.Column("environment_id", sa.String(200), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("rotation_id", sa.String(100), nullable=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("leased_until", sa.Float, nullable=False),
        sa.Column("awaiting_ack_until", sa.Float, nullable=False),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float, nullable=True),
        sa.UniqueConstraint("event_id", "subscription_id", name="uq_notifier_delivery_event_sub"),
    )
    op.create_index("ix_notifier_delivery_due", "notifier_delivery", ["status", "next_attempt_at"])
    op.create_index("ix_notifier_delivery_env_gen", "notifier_delivery", ["environment_id", "generation"])
    op.create_index("ix_notifier_delivery_subscription_id", "notifier_delivery", ["subscription_id"])
    op.create_table(
        "notifier_rotation",
        sa.Column("environment_id", sa.String(200), primary_key=True),
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("rotation_id", sa.String(100), nullable=True),
        sa.Column("change_type", sa.String(16), nullable=False),
        sa.Column("occurred_at", sa.Float, nullable=False),
        sa.Column("recorded_at", sa.Float, nullable=False),
    )
    op.create_table(
        "notifier_environment",
        sa.Column("environment_id", sa.String(200), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("notifier_environment")
    op.drop_table("notifier_rotation")
    op.drop_index("ix_notifier_delivery_subscription_id", "notifier_delivery")
    op.drop_index("ix_notifier_delivery_env_gen", "notifier_delivery")
    op.drop_index("ix_notifier_delivery_due", "notifier_delivery")
    op.drop_table("notifier_delivery")
    op.drop_index("ix_notifier_subscription_environment_id", "notifier_subscription")
    op.drop_table("notifier_subscription")
