"""The notifier's tables (SQLModel), the models its Alembic migrations are compared with.

``XRow`` names a table; the store reads them with SQLAlchemy Core and hands out the domain's values
(:class:`~services.notifier.domain.Subscription`, :class:`~services.notifier.domain.WebhookDelivery`).
Times are Unix seconds (floats).
"""

from __future__ import annotations

from sqlalchemy import Index, MetaData, Table, Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel


class SubscriptionRow(SQLModel, table=True):
    __tablename__ = "notifier_subscription"
    __table_args__ = (UniqueConstraint("environment_id", "deployment_id", name="uq_notifier_sub_deployment"),)

    id: str = Field(primary_key=True, max_length=40)
    environment_id: str = Field(index=True, max_length=200)
    deployment_id: str = Field(max_length=200)
    url: str = Field(sa_column=Column(Text, nullable=False))
    action: str = Field(max_length=16)
    secret: str = Field(max_length=100)
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=200)
    last_notified_generation: int = 0
    acked_generation: int = 0
    created_at: float
    updated_at: float
    # Ownership: the management key's hash, and the streaming token (by public id) it was made or last
    # renewed with, of that generation; ended_generation = the event that no longer listed that token.
    key_hash: str | None = Field(default=None, max_length=64)
    owner_token_id: str | None = Field(default=None, max_length=100)
    owner_generation: int = 0
    ended_generation: int | None = None


class DeliveryRow(SQLModel, table=True):
    __tablename__ = "notifier_delivery"
    __table_args__ = (
        UniqueConstraint("event_id", "subscription_id", name="uq_notifier_delivery_event_sub"),
        Index("ix_notifier_delivery_due", "status", "next_attempt_at"),
        Index("ix_notifier_delivery_env_gen", "environment_id", "generation"),
    )

    id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(max_length=64)
    subscription_id: str = Field(index=True, max_length=40)
    environment_id: str = Field(max_length=200)
    generation: int
    rotation_id: str | None = Field(default=None, max_length=100)
    event_type: str = Field(max_length=64)
    action: str = Field(max_length=16)
    body: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: float
    leased_until: float = 0.0
    awaiting_ack_until: float = 0.0
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=300)
    created_at: float
    delivered_at: float | None = None


class RotationRow(SQLModel, table=True):
    __tablename__ = "notifier_rotation"

    environment_id: str = Field(primary_key=True, max_length=200)
    generation: int = Field(primary_key=True)
    event_id: str = Field(max_length=64)
    rotation_id: str | None = Field(default=None, max_length=100)
    change_type: str = Field(max_length=16)
    occurred_at: float
    recorded_at: float


class EnvironmentStateRow(SQLModel, table=True):
    """The newest generation consumed for an environment (acknowledgements may not claim a later one)."""

    __tablename__ = "notifier_environment"

    environment_id: str = Field(primary_key=True, max_length=200)
    generation: int
    updated_at: float


class NoticeRow(SQLModel, table=True):
    """A warning the issuer asked for (a scheduled rotation due soon), kept so a repeated request with the
    same notice id is answered without a second fan-out; its deliveries are in ``notifier_delivery``."""

    __tablename__ = "notifier_notice"

    environment_id: str = Field(primary_key=True, max_length=200)
    notice_id: str = Field(primary_key=True, max_length=100)
    event_id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    generation: int
    due_at: float
    forced_at: float | None = None
    deliveries: int = 0
    accepted_at: float


SUBSCRIPTIONS: Table = SQLModel.metadata.tables[SubscriptionRow.__tablename__]
DELIVERIES: Table = SQLModel.metadata.tables[DeliveryRow.__tablename__]
ROTATIONS: Table = SQLModel.metadata.tables[RotationRow.__tablename__]
ENVIRONMENTS: Table = SQLModel.metadata.tables[EnvironmentStateRow.__tablename__]
NOTICES: Table = SQLModel.metadata.tables[NoticeRow.__tablename__]
TABLES = (SUBSCRIPTIONS, DELIVERIES, ROTATIONS, ENVIRONMENTS, NOTICES)


def notifier_metadata() -> MetaData:
    """The notifier's tables alone (SQLModel's metadata also holds the issuer's when both are imported):
    what the migrations must produce."""
    metadata = MetaData()
    for table in TABLES:
        table.to_metadata(metadata)
    return metadata
