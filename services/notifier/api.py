"""The notifier's HTTP API: subscriptions, acknowledgements, rotation progress, dead deliveries.

Every route takes the caller's streaming token (``Authorization: Bearer stk_...``) and works inside that
token's environment only; a subscription or delivery of another environment is answered as not found.
Routes only translate HTTP to store calls; the rules live in :mod:`services.notifier.domain`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.notifier.auth import Identity, ResolverUnavailable, TokenVerifier
from services.notifier.domain import (
    Action,
    DeliveryStatus,
    InvalidWebhookUrl,
    WindowLimiter,
    validate_webhook_url,
)
from services.notifier.settings import NotifierSettings
from services.notifier.store import (
    MAX_GENERATION,
    GenerationAhead,
    Store,
    SubscriptionConflict,
    SubscriptionForbidden,
    SubscriptionLimitReached,
)
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


class ErrorBody(BaseModel):
    """Every error answer: a stable code and one sentence (validation errors add ``details``)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="a stable code, e.g. invalid_token, forbidden, not_found")
    message: str = Field(description="what went wrong, in one sentence")


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


KEY_HEADER = "X-Subscription-Key"
_PRIVATE = ("secret", "key_hash", "owner_token_id", "owner_generation", "ended_generation", "management_key")

_DESCRIPTIONS = {
    401: "no, a malformed, an unknown or a deactivated streaming token",
    403: f"the subscription's management key ({KEY_HEADER}) is missing or wrong, or another environment",
    404: "no such subscription or delivery in the token's environment",
    409: "the request conflicts with the current state (see the error code)",
    413: "the request body is larger than the notifier accepts",
    422: "invalid input (body, path or query)",
    429: "too many requests of this kind; wait Retry-After seconds",
    503: (
        "resolver_unavailable: the token could not be checked because the resolver is unreachable; "
        "database_unavailable: the database is unreachable, restarting, locked or full (Retry-After)"
    ),
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers of a route, all with the JSON error body."""
    return {
        code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in (401, 422, 503, *codes)
    }


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _subscription(row: dict[str, Any], with_secret: bool = False) -> dict[str, Any]:
    data = {**row, "created_at": _ts(row["created_at"]), "updated_at": _ts(row["updated_at"])}
    for name in _PRIVATE:
        if not (with_secret and name in ("secret", "management_key")):
            data.pop(name, None)
    return data


_GENERIC_ERRORS = ("HTTP ", "timed out", "connection failed", "request failed", "webhook ", "subscription ")


def _public_error(error: str | None) -> str | None:
    """``last_error`` as clients see it: what failed, never an address, a port or an OS message."""
    if error is None:
        return None
    if error.startswith(_GENERIC_ERRORS) and not any(ch in error for ch in "[]()'"):
        return error
    return "delivery failed"


def _delivery(row: dict[str, Any]) -> DeliveryPublic:
    pending = row["status"] == DeliveryStatus.PENDING.value
    return DeliveryPublic.model_validate(
        {
            **row,
            "last_error": _public_error(row["last_error"]),
            "next_attempt_at": _ts(row["next_attempt_at"]) if pending else None,
            "created_at": _ts(row["created_at"]),
            "delivered_at": _ts(row["delivered_at"]),
        }
    )


def _cursor(created_at: float, item_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at, item_id])).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    try:
        created_at, item_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(created_at, int | float) and isinstance(item_id, str) and math.isfinite(created_at):
            return float(created_at), item_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        pass
    raise ApiError(422, "invalid_request", "the cursor is not one this API returned")


def _page(rows: list[dict[str, Any]], limit: int, response: Response) -> list[dict[str, Any]]:
    """The first ``limit`` rows; an ``X-Next-Cursor`` header when there are more."""
    if len(rows) > limit:
        rows = rows[:limit]
        response.headers["X-Next-Cursor"] = _cursor(rows[-1]["created_at"], rows[-1]["id"])
    return rows


_NEXT_CURSOR = {
    "X-Next-Cursor": {
        "description": "present when there are more: pass it as ?cursor= for the next page",
        "schema": {"type": "string"},
    }
}


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
Key = Annotated[
    str | None,
    Header(
        alias=KEY_HEADER,
        max_length=200,
        description="the management key returned when the subscription was created",
    ),
]
SubscriptionId = Annotated[str, Path(max_length=40)]
DeliveryId = Annotated[str, Path(max_length=40)]
Limit = Annotated[int, Query(ge=1, le=500, description="at most this many (1-500)")]
Cursor = Annotated[str | None, Query(max_length=200, description="X-Next-Cursor of the previous page")]
RotationLimit = Annotated[int, Query(ge=1, le=500, description="the newest this many rotations")]
Before = Annotated[
    int | None, Query(ge=1, le=MAX_GENERATION, description="only rotations older than this generation")
]


def _checked_url(url: str, settings: NotifierSettings) -> str:
    try:
        return validate_webhook_url(url, settings.allowed_webhook_hosts)
    except InvalidWebhookUrl as exc:
        raise ApiError(422, "invalid_webhook_url", str(exc)) from None


def _not_found(kind: str) -> ApiError:
    return ApiError(404, "not_found", f"no such {kind} in your environment")


def _forbidden() -> ApiError:
    return ApiError(
        403,
        "forbidden",
        f"this needs the subscription's management key in the {KEY_HEADER} header (returned once, when the "
        "subscription was created); a deployment id registered by someone else cannot be taken over",
    )


async def _owned(call: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(call, *args)
    except SubscriptionForbidden:
        raise _forbidden() from None


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post(
        "/subscriptions",
        response_model=SubscriptionCreated | SubscriptionWithSecret,
        status_code=201,
        responses={
            201: {"model": SubscriptionCreated, "description": "subscribed: the secret and key, shown once"},
            200: {
                "model": SubscriptionWithSecret,
                "description": f"the deployment re-registered (with its {KEY_HEADER})",
            },
            **_errors(403, 409, 413),
        },
        tags=["subscriptions"],
    )
    async def register(
        body: SubscriptionCreate,
        who: Caller,
        store: StoreDep,
        settings: SettingsDep,
        response: Response,
        key: Key = None,
    ) -> Any:
        """Subscribe a deployment of the token's environment to rotation webhooks.

        Returns the signing secret and the management key, once. Registering the same ``deployment_id``
        again needs that key (``X-Subscription-Key``); it updates the url and action.
        """
        url = _checked_url(body.url, settings)
        try:
            row, created = await _owned(
                store.upsert_subscription,
                who.environment_id,
                body.deployment_id,
                url,
                body.action,
                who.generation,
                who.token_id,
                key,
                settings.max_subscriptions_per_environment,
            )
        except SubscriptionLimitReached:
            raise ApiError(
                409,
                "too_many_subscriptions",
                f"the environment has {settings.max_subscriptions_per_environment} subscriptions, the most "
                "allowed (STREAMTOKEN_NOTIFIER_MAX_SUBSCRIPTIONS_PER_ENVIRONMENT); delete unused ones",
            ) from None
        except SubscriptionConflict:
            raise ApiError(
                409, "conflict", "the deployment is being registered concurrently; retry"
            ) from None
        response.status_code = 201 if created else 200
        log.info(
            "subscription_registered" if created else "subscription_reregistered",
            subscription_id=row["id"],
            environment_id=who.environment_id,
            deployment_id=body.deployment_id,
            action=body.action.value,
            token_id=who.token_id,
        )
        data = _subscription(row, with_secret=True)
        if created:
            return SubscriptionCreated.model_validate(data)
        return SubscriptionWithSecret.model_validate(data)

    @router.get(
        "/subscriptions",
        response_model=list[SubscriptionPublic],
        responses={200: {"headers": _NEXT_CURSOR}, **_errors()},
        tags=["subscriptions"],
    )
    async def list_subscriptions(
        who: Caller, store: StoreDep, response: Response, limit: Limit = 100, cursor: Cursor = None
    ) -> list[dict[str, Any]]:
        """The environment's subscriptions in creation order, without secrets, a page at a time."""
        after = _after(cursor)
        rows = await asyncio.to_thread(store.list_subscriptions, who.environment_id, limit + 1, after)
        return [_subscription(r) for r in _page(rows, limit, response)]

    @router.get(
        "/subscriptions/{subscription_id}",
        response_model=SubscriptionPublic,
        responses=_errors(404),
        tags=["subscriptions"],
    )
    async def get_subscription(
        subscription_id: SubscriptionId, who: Caller, store: StoreDep
    ) -> dict[str, Any]:
        row = await asyncio.to_thread(store.get_subscription, who.environment_id, subscription_id)
        if row is None:
            raise _not_found("subscription")
        return _subscription(row)

    @router.get(
        "/subscriptions/{subscription_id}/secret",
        response_model=SubscriptionSecret,
        responses=_errors(403, 404),
        tags=["subscriptions"],
    )
    async def get_secret(
        subscription_id: SubscriptionId, who: Caller, store: StoreDep, key: Key = None
    ) -> SubscriptionSecret:
        """The signing secret again, for the holder of the management key."""
        secret = await _owned(store.secret, who.environment_id, subscription_id, key)
        if secret is None:
            raise _not_found("subscription")
        return SubscriptionSecret(id=subscription_id, secret=secret)

    @router.patch(
        "/subscriptions/{subscription_id}",
        response_model=SubscriptionPublic,
        responses=_errors(403, 404, 413),
        tags=["subscriptions"],
    )
    async def update_subscription(
        subscription_id: SubscriptionId,
        body: SubscriptionUpdate,
        who: Caller,
        store: StoreDep,
        settings: SettingsDep,
        key: Key = None,
    ) -> dict[str, Any]:
        """Change url, action or enabled (needs the management key)."""
        url = _checked_url(body.url, settings) if body.url is not None else None
        row = await _owned(
            store.update_subscription,
            who.environment_id,
            subscription_id,
            key,
            url,
            body.action,
            body.enabled,
            who.token_id,
            who.generation,
        )
        if row is None:
            raise _not_found("subscription")
        log.info("subscription_updated", subscription_id=subscription_id, environment_id=who.environment_id)
        return _subscription(row)

    @router.delete(
        "/subscriptions/{subscription_id}",
        status_code=204,
        responses=_errors(403, 404),
        tags=["subscriptions"],
    )
    async def delete_subscription(
        subscription_id: SubscriptionId, who: Caller, store: StoreDep, key: Key = None
    ) -> Response:
        """Delete a subscription (needs the management key); its pending deliveries become disabled."""
        if not await _owned(store.delete_subscription, who.environment_id, subscription_id, key):
            raise _not_found("subscription")
        log.info("subscription_deleted", subscription_id=subscription_id, environment_id=who.environment_id)
        return Response(status_code=204)

    @router.post(
        "/subscriptions/{subscription_id}/acks",
        response_model=SubscriptionPublic,
        responses=_errors(403, 404, 409, 413),
        tags=["subscriptions"],
    )
    async def acknowledge(
        subscription_id: SubscriptionId, body: AckCreate, who: Caller, store: StoreDep, key: Key = None
    ) -> dict[str, Any]:
        """The deployment reports it now runs with ``generation``; frees its restart slot.

        Needs the management key; renews the subscription for the (valid) token used.
        """
        try:
            row = await _owned(
                store.acknowledge,
                who.environment_id,
                subscription_id,
                body.generation,
                key,
                who.token_id,
                who.generation,
            )
        except GenerationAhead as exc:
            raise ApiError(
                409,
                "generation_ahead",
                f"generation {body.generation} is newer than the environment's current one ({exc.current})",
            ) from None
        if row is None:
            raise _not_found("subscription")
        log.info(
            "acknowledged",
            subscription_id=subscription_id,
            environment_id=who.environment_id,
            generation=body.generation,
        )
        return _subscription(row)

    async def rotations_of(
        environment_id: str, who: Identity, store: Store, limit: int, before: int | None
    ) -> RotationsPublic:
        if environment_id != who.environment_id:
            raise ApiError(403, "forbidden", "a streaming token only shows its own environment's rotations")
        progress = await asyncio.to_thread(store.rotations, environment_id, limit, before)
        subscriptions = await asyncio.to_thread(store.count_subscriptions, environment_id)
        return RotationsPublic(
            environment_id=environment_id,
            subscriptions=subscriptions,
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

    @router.get("/rotations", response_model=RotationsPublic, responses=_errors(403), tags=["rotations"])
    async def rotations(
        who: Caller,
        store: StoreDep,
        environment_id: Annotated[str | None, Query(max_length=200)] = None,
        limit: RotationLimit = 100,
        before: Before = None,
    ) -> RotationsPublic:
        """Per rotation: how many subscriptions were notified, have acknowledged, are pending or dead."""
        return await rotations_of(environment_id or who.environment_id, who, store, limit, before)

    @router.get(
        "/environments/{environment_id}/rotations",
        response_model=RotationsPublic,
        responses=_errors(403),
        tags=["rotations"],
    )
    async def environment_rotations(
        environment_id: Annotated[str, Path(max_length=200)],
        who: Caller,
        store: StoreDep,
        limit: RotationLimit = 100,
        before: Before = None,
    ) -> RotationsPublic:
        return await rotations_of(environment_id, who, store, limit, before)

    @router.get(
        "/deliveries",
        response_model=list[DeliveryPublic],
        responses={200: {"headers": _NEXT_CURSOR}, **_errors()},
        tags=["deliveries"],
    )
    async def list_deliveries(
        who: Caller,
        store: StoreDep,
        response: Response,
        status: DeliveryStatus | None = None,
        subscription_id: Annotated[str | None, Query(max_length=40)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Cursor = None,
    ) -> list[DeliveryPublic]:
        """Deliveries, newest first, a page at a time."""
        after = _after(cursor)
        rows = await asyncio.to_thread(
            store.list_deliveries, who.environment_id, status, limit + 1, subscription_id, after
        )
        return [_delivery(r) for r in _page(rows, limit, response)]

    @router.get(
        "/deliveries/{delivery_id}",
        response_model=DeliveryPublic,
        responses=_errors(404),
        tags=["deliveries"],
    )
    async def get_delivery(delivery_id: DeliveryId, who: Caller, store: StoreDep) -> DeliveryPublic:
        row = await asyncio.to_thread(store.get_delivery, who.environment_id, delivery_id)
        if row is None:
            raise _not_found("delivery")
        return _delivery(row)

    @router.post(
        "/deliveries/{delivery_id}/replay",
        response_model=DeliveryPublic,
        responses=_errors(404, 409, 429),
        tags=["deliveries"],
    )
    async def replay(
        delivery_id: DeliveryId, who: Caller, store: StoreDep, request: Request
    ) -> DeliveryPublic:
        """Send a dead (or disabled) delivery again, with a fresh set of attempts and the same webhook-id.

        Refused while its subscription is disabled, and rate-limited per subscription and environment.
        """
        found = await asyncio.to_thread(store.get_delivery, who.environment_id, delivery_id)
        if found is None:
            raise _not_found("delivery")
        per_environment, per_subscription = request.app.state.replay_limits
        now = time.monotonic()
        wait = per_environment.retry_after(who.environment_id, now) or per_subscription.retry_after(
            found["subscription_id"], now
        )
        if wait:
            raise ApiError(
                429,
                "too_many_replays",
                "too many replays for this subscription or environment; wait and retry",
                {"Retry-After": str(math.ceil(wait))},
            )
        row, outcome = await asyncio.to_thread(store.replay, who.environment_id, delivery_id, time.time())
        if row is None:
            raise _not_found("delivery")
        if outcome == "subscription_disabled":
            raise ApiError(
                409,
                "subscription_disabled",
                "the delivery's subscription is disabled or deleted; re-enable it (PATCH enabled=true) first",
            )
        if outcome != "replayed":
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


def replay_limits(settings: NotifierSettings) -> tuple[WindowLimiter, WindowLimiter]:
    """The per-environment and per-subscription replay limits, kept in this replica's memory."""
    return (
        WindowLimiter(settings.replays_per_environment_per_minute),
        WindowLimiter(settings.replays_per_subscription_per_minute),
    )
