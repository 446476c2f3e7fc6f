"""The notifier API's request and response bodies, shared by ``services.notifier.api`` (which serves them)
and ``shared.client`` (which sends and reads them); free of FastAPI and of the notifier's modules.

``Action`` and ``DeliveryStatus`` live here too: the notifier's domain uses these same enums.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_GENERATION = 2**63 - 1


class Action(StrEnum):
    """What a deployment does after a rotation (the seeds' two strategies)."""

    RESTART = "restart"  # it runs on the injected Token 1, which the rotation deactivated
    RELOAD = "reload"  # it already switched to Token 2 through a variable it controls


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at (also while claimed: the lease pushes it forward)
    DELIVERED = "delivered"
    DEAD = "dead"  # the last attempt failed; replay puts it back to pending
    DISABLED = "disabled"  # its subscription answered 410 Gone or was deleted


DEPLOYMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscriptionCreate(_Input):
    deployment_id: str = Field(
        min_length=1,
        max_length=200,
        pattern=DEPLOYMENT_ID_PATTERN,
        description="your name for the deployment; registering the same one again updates it",
    )
    url: str = Field(min_length=1, max_length=2000, description="http(s) URL the webhooks are posted to")
    action: Action = Field(description="what the deployment does after a rotation: restart or reload")


class SubscriptionUpdate(_Input):
    url: str | None = Field(None, min_length=1, max_length=2000)
    action: Action | None = None
    enabled: bool | None = Field(None, description="re-enable a subscription disabled by a 410")


class AckCreate(_Input):
    generation: int = Field(
        ge=1,
        le=MAX_GENERATION,
        description="the token generation the deployment now runs with (at most the current one)",
    )


class SubscriptionPublic(BaseModel):
    id: str
    environment_id: str
    deployment_id: str
    url: str
    action: Action
    enabled: bool
    disabled_reason: str | None
    last_notified_generation: int
    acked_generation: int
    created_at: datetime
    updated_at: datetime


class SubscriptionWithSecret(SubscriptionPublic):
    secret: str = Field(description="Standard Webhooks signing secret (whsec_...) to verify webhooks with")


class SubscriptionCreated(SubscriptionWithSecret):
    management_key: str = Field(
        description=(
            "shown only now: send it as X-Subscription-Key to read the secret again, change, delete, "
            "acknowledge or re-register this subscription"
        )
    )


class SubscriptionSecret(BaseModel):
    id: str
    secret: str


class RotationPublic(BaseModel):
    generation: int
    rotation_id: str | None
    notified: int
    acknowledged: int
    pending: int
    dead: int


class RotationsPublic(BaseModel):
    environment_id: str
    subscriptions: int
    rotations: list[RotationPublic]


class DeliveryPublic(BaseModel):
    id: str
    event_id: str
    subscription_id: str
    environment_id: str
    generation: int
    rotation_id: str | None
    event_type: str
    action: Action
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


NOTICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"


class NoticeCreate(_Input):
    """A warning the issuer has the notifier send (``POST /v1/environments/{id}/notices``, internal key)."""

    kind: Literal["rotation_due"] = Field(description="rotation_due: a scheduled rotation is coming")
    generation: int = Field(ge=0, le=MAX_GENERATION, description="the environment's current generation")
    due_at: datetime = Field(description="when the rotation is due (ISO 8601 with a zone)")
    forced_at: datetime | None = Field(None, description="when it happens even if Token 1 is still used")
    notice_id: str = Field(
        pattern=NOTICE_ID_PATTERN, description="the issuer's idempotency id: the same id is sent once"
    )


class NoticeAccepted(BaseModel):
    environment_id: str
    notice_id: str
    generation: int
    queued: int = Field(description="deliveries of this notice (one per enabled subscription)")
    created: bool = Field(description="false: this notice id was accepted before; nothing new is sent")
