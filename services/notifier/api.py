"""The notifier's HTTP API: subscriptions, acknowledgements, rotation progress, dead deliveries.

Every route takes the caller's streaming token (``Authorization: Bearer stk_...``) and works inside that
token's environment only; a subscription or delivery of another environment is answered as not found.
Routes only translate HTTP to store calls; the rules live in :mod:`services.notifier.domain`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.notifier.auth import Identity, ResolverUnavailable, TokenVerifier
from services.notifier.domain import Action, DeliveryStatus, InvalidWebhookUrl, validate_webhook_url
from services.notifier.settings import NotifierSettings
from services.notifier.store import Store
from shared.errors import INVALID_TOKEN_CHALLENGE, ApiError, bearer_streaming_token
from shared.logs import get_logger

log = get_logger(__name__)

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
    generation: int = Field(ge=1, description="the token generation the deployment now runs with")


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


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _subscription(row: dict[str, Any], with_secret: bool = False) -> dict[str, Any]:
    data = {**row, "created_at": _ts(row["created_at"]), "updated_at": _ts(row["updated_at"])}
    if not with_secret:
        data.pop("secret", None)
    return data


def _delivery(row: dict[str, Any]) -> DeliveryPublic:
    pending = row["status"] == DeliveryStatus.PENDING.value
    return DeliveryPublic.model_validate(
        {
            **row,
            "next_attempt_at": _ts(row["next_attempt_at"]) if pending else None,
            "created_at": _ts(row["created_at"]),
            "delivered_at": _ts(row["delivered_at"]),
        }
    )


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _settings(request: Request) -> NotifierSettings:
    settings: NotifierSettings = request.app.state.settings
    return settings


async def caller(request: Request) -> Identity:
    """The identity of the streaming token in the ``Authorization`` header, or a 401/503."""
    token = bearer_streaming_token(request.headers.get("authorization"))
    verifier: TokenVerifier = request.app.state.verifier
    try:
        identity = await verifier.whoami(token)
    except ResolverUnavailable:
        raise ApiError(
            503,
            "resolver_unavailable",
            "the token could not be checked because the resolver is unreachable; retry",
        ) from None
    if identity is None:
        raise ApiError(
            401,
            "invalid_token",
            "the streaming token is unknown or has been deactivated",
            INVALID_TOKEN_CHALLENGE,
        )
    return identity


Caller = Annotated[Identity, Depends(caller)]
StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[NotifierSettings, Depends(_settings)]


def _checked_url(url: str, settings: NotifierSettings) -> str:
    try:
        return validate_webhook_url(url, settings.allowed_webhook_hosts)
    except InvalidWebhookUrl as exc:
        raise ApiError(422, "invalid_webhook_url", str(exc)) from None


def _not_found(kind: str) -> ApiError:
    return ApiError(404, "not_found", f"no such {kind} in your environment")


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post(
        "/subscriptions",
        response_model=SubscriptionWithSecret,
        status_code=201,
        responses={200: {"model": SubscriptionWithSecret, "description": "the deployment re-registered"}},
        tags=["subscriptions"],
    )
    async def register(
        body: SubscriptionCreate, who: Caller, store: StoreDep, settings: SettingsDep, response: Response
    ) -> dict[str, Any]:
        """Subscribe a deployment of the token's environment to rotation webhooks; returns its secret."""
        url = _checked_url(body.url, settings)
        row, created = await asyncio.to_thread(
            store.upsert_subscription,
            who.environment_id,
            body.deployment_id,
            url,
            body.action,
            who.generation,
        )
        response.status_code = 201 if created else 200
        log.info(
            "subscription_registered" if created else "subscription_reregistered",
            subscription_id=row["id"],
            environment_id=who.environment_id,
            deployment_id=body.deployment_id,
            action=body.action.value,
            token_id=who.token_id,
        )
        return _subscription(row, with_secret=True)

    @router.get("/subscriptions", response_model=list[SubscriptionPublic], tags=["subscriptions"])
    async def list_subscriptions(who: Caller, store: StoreDep) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(store.list_subscriptions, who.environment_id)
        return [_subscription(r) for r in rows]

    @router.get(
        "/subscriptions/{subscription_id}", response_model=SubscriptionWithSecret, tags=["subscriptions"]
    )
    async def get_subscription(subscription_id: str, who: Caller, store: StoreDep) -> dict[str, Any]:
        row = await asyncio.to_thread(store.get_subscription, who.environment_id, subscription_id)
        if row is None:
            raise _not_found("subscription")
        return _subscription(row, with_secret=True)

    @router.patch(
        "/subscriptions/{subscription_id}", response_model=SubscriptionPublic, tags=["subscriptions"]
    )
    async def update_subscription(
        subscription_id: str, body: SubscriptionUpdate, who: Caller, store: StoreDep, settings: SettingsDep
    ) -> dict[str, Any]:
        url = _checked_url(body.url, settings) if body.url is not None else None
        row = await asyncio.to_thread(
            store.update_subscription, who.environment_id, subscription_id, url, body.action, body.enabled
        )
        if row is None:
            raise _not_found("subscription")
        log.info("subscription_updated", subscription_id=subscription_id, environment_id=who.environment_id)
        return _subscription(row)

    @router.delete("/subscriptions/{subscription_id}", status_code=204, tags=["subscriptions"])
    async def delete_subscription(subscription_id: str, who: Caller, store: StoreDep) -> Response:
        if not await asyncio.to_thread(store.delete_subscription, who.environment_id, subscription_id):
            raise _not_found("subscription")
        log.info("subscription_deleted", subscription_id=subscription_id, environment_id=who.environment_id)
        return Response(status_code=204)

    @router.post(
        "/subscriptions/{subscription_id}/acks", response_model=SubscriptionPublic, tags=["subscriptions"]
    )
    async def acknowledge(
        subscription_id: str, body: AckCreate, who: Caller, store: StoreDep
    ) -> dict[str, Any]:
        """The deployment reports it now runs with ``generation``; frees its restart slot."""
        row = await asyncio.to_thread(store.acknowledge, who.environment_id, subscription_id, body.generation)
        if row is None:
            raise _not_found("subscription")
        log.info(
            "acknowledged",
            subscription_id=subscription_id,
            environment_id=who.environment_id,
            generation=body.generation,
        )
        return _subscription(row)

    async def rotations_of(environment_id: str, who: Identity, store: Store) -> RotationsPublic:
        if environment_id != who.environment_id:
            raise ApiError(403, "forbidden", "a streaming token only shows its own environment's rotations")
        progress = await asyncio.to_thread(store.rotations, environment_id)
        subscriptions = await asyncio.to_thread(store.list_subscriptions, environment_id)
        return RotationsPublic(
            environment_id=environment_id,
            subscriptions=len(subscriptions),
            rotations=[
                RotationPublic(
                    generation=p.generation,
                    rotation_id=p.rotation_id,
                    notified=p.notified,
                    acknowledged=p.acknowledged,
                    pending=p.pending,
                    dead=p.dead,
                )
                for p in progress
            ],
        )

    @router.get("/rotations", response_model=RotationsPublic, tags=["rotations"])
    async def rotations(
        who: Caller, store: StoreDep, environment_id: Annotated[str | None, Query(max_length=200)] = None
    ) -> RotationsPublic:
        """Per rotation: how many subscriptions were notified, have acknowledged, are pending or dead."""
        return await rotations_of(environment_id or who.environment_id, who, store)

    @router.get(
        "/environments/{environment_id}/rotations", response_model=RotationsPublic, tags=["rotations"]
    )
    async def environment_rotations(environment_id: str, who: Caller, store: StoreDep) -> RotationsPublic:
        return await rotations_of(environment_id, who, store)

    @router.get("/deliveries", response_model=list[DeliveryPublic], tags=["deliveries"])
    async def list_deliveries(
        who: Caller,
        store: StoreDep,
        status: DeliveryStatus | None = None,
        subscription_id: Annotated[str | None, Query(max_length=40)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[DeliveryPublic]:
        rows = await asyncio.to_thread(
            store.list_deliveries, who.environment_id, status, limit, subscription_id
        )
        return [_delivery(r) for r in rows]

    @router.get("/deliveries/{delivery_id}", response_model=DeliveryPublic, tags=["deliveries"])
    async def get_delivery(delivery_id: str, who: Caller, store: StoreDep) -> DeliveryPublic:
        row = await asyncio.to_thread(store.get_delivery, who.environment_id, delivery_id)
        if row is None:
            raise _not_found("delivery")
        return _delivery(row)

    @router.post("/deliveries/{delivery_id}/replay", response_model=DeliveryPublic, tags=["deliveries"])
    async def replay(delivery_id: str, who: Caller, store: StoreDep, request: Request) -> DeliveryPublic:
        """Send a dead (or disabled) delivery again, with a fresh set of attempts and the same webhook-id."""
        row, replayed = await asyncio.to_thread(store.replay, who.environment_id, delivery_id, time.time())
        if row is None:
            raise _not_found("delivery")
        if not replayed:
            raise ApiError(
                409,
                "not_replayable",
                f"the delivery is {row['status']}; only dead or disabled ones can be replayed",
            )
        log.info("delivery_replayed", delivery_id=delivery_id, environment_id=who.environment_id)
        engine = getattr(request.app.state, "engine", None)
        if engine is not None:
            engine.wake()
        return _delivery(row)

    return router
