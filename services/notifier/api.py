"""The notifier's HTTP API: subscriptions, acknowledgements, rotation progress, dead deliveries.

Every route takes the caller's streaming token (``Authorization: Bearer stk_...``) and works inside that
token's environment only; a subscription or delivery of another environment is answered as not found.
Routes only translate HTTP to :class:`~services.notifier.handlers.Handlers` calls and their domain values
to responses; the service rules live in the handlers and :mod:`services.notifier.domain`. Dependencies
reach the routes through :func:`build_router`'s arguments (closures), never through ``app.state``.
"""

import base64
import binascii
import hmac
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from services.notifier.auth import Identity, ResolverUnavailable, TokenVerifier
from services.notifier.domain import MAX_GENERATION, DeliveryStatus, Notice, Subscription, WebhookDelivery
from services.notifier.handlers import (
    KEY_HEADER,
    Conflict,
    Forbidden,
    Handlers,
    InvalidInput,
    NotFound,
    NotifierError,
    RateLimited,
    Rotations,
)
from shared.errors import INVALID_TOKEN_CHALLENGE, ApiError, bearer_streaming_token, error_body
from shared.logs import get_logger
from shared.models.notifier import (  # noqa: F401 - the bodies are part of this module's surface
    DEPLOYMENT_ID_PATTERN,
    AckCreate,
    DeliveryPublic,
    NoticeAccepted,
    NoticeCreate,
    RotationPublic,
    RotationsPublic,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPublic,
    SubscriptionSecret,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)
from shared.web import ErrorBody

log = get_logger(__name__)


# Each handler error answers one status (the service layer knows no HTTP).
STATUS: dict[type[NotifierError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    RateLimited: 429,
}

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


def install_handler_errors(app: FastAPI) -> None:
    """Every :class:`NotifierError` as its status with the JSON error body (one place, not per route)."""

    async def _notifier_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, NotifierError)
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return JSONResponse(error_body(exc.code, exc.message), status_code=status, headers=headers)

    app.add_exception_handler(NotifierError, _notifier_error)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers of a route, all with the JSON error body."""
    return {
        code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in (401, 422, 503, *codes)
    }


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _public(sub: Subscription) -> SubscriptionPublic:
    return SubscriptionPublic(
        id=sub.id,
        environment_id=sub.environment_id,
        deployment_id=sub.deployment_id,
        url=sub.url,
        action=sub.action,
        enabled=sub.enabled,
        disabled_reason=sub.disabled_reason,
        last_notified_generation=sub.last_notified_generation,
        acked_generation=sub.acked_generation,
        created_at=datetime.fromtimestamp(sub.created_at, UTC),
        updated_at=datetime.fromtimestamp(sub.updated_at, UTC),
    )


_GENERIC_ERRORS = ("HTTP ", "timed out", "connection failed", "request failed", "webhook ", "subscription ")


def _public_error(error: str | None) -> str | None:
    """``last_error`` as clients see it: what failed, never an address, a port or an OS message."""
    if error is None:
        return None
    if error.startswith(_GENERIC_ERRORS) and not any(ch in error for ch in "[]()'"):
        return error
    return "delivery failed"


def _delivery(d: WebhookDelivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id,
        event_id=d.event_id,
        subscription_id=d.subscription_id,
        environment_id=d.environment_id,
        generation=d.generation,
        rotation_id=d.rotation_id,
        event_type=d.event_type,
        action=d.action,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=_ts(d.next_attempt_at) if d.status is DeliveryStatus.PENDING else None,
        last_status_code=d.last_status_code,
        last_error=_public_error(d.last_error),
        created_at=datetime.fromtimestamp(d.created_at, UTC),
        delivered_at=_ts(d.delivered_at),
    )


def _rotations(r: Rotations) -> RotationsPublic:
    return RotationsPublic(
        environment_id=r.environment_id,
        subscriptions=r.subscriptions,
        rotations=[RotationPublic.model_validate(p, from_attributes=True) for p in r.rotations],
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


Paged = TypeVar("Paged", Subscription, WebhookDelivery)


def _page(items: Sequence[Paged], limit: int, response: Response) -> Sequence[Paged]:
    """The first ``limit`` items; an ``X-Next-Cursor`` header when there are more."""
    if len(items) > limit:
        items = items[:limit]
        response.headers["X-Next-Cursor"] = _cursor(items[-1].created_at, items[-1].id)
    return items


_NEXT_CURSOR = {
    "X-Next-Cursor": {
        "description": "present when there are more: pass it as ?cursor= for the next page",
        "schema": {"type": "string"},
    }
}


def token_caller(verifier: TokenVerifier) -> Any:
    """The dependency that checks the ``Authorization`` header's streaming token with ``verifier``."""

    async def caller(request: Request) -> Identity:
        """The identity of the streaming token in the ``Authorization`` header, or a 401/503."""
        token = bearer_streaming_token(request.headers.get("authorization"))
        client = (request.client.host if request.client else "", request.headers.get("user-agent", ""))
        try:
            identity = await verifier.whoami(token, client)
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

    return caller


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


def build_router(handlers: Handlers, verifier: TokenVerifier, internal_key: str | None = None) -> APIRouter:
    """The ``/v1`` routes over ``handlers``, callers checked by ``verifier``; ``internal_key``
    (STREAMTOKEN_NOTIFIER_INTERNAL_KEY) lets the issuer read any environment's rotations."""
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Identity, Depends(token_caller(verifier))]
    by_token = token_caller(verifier)

    async def internal_or_token(request: Request) -> Identity | None:
        """None for the issuer's call with the internal key (no streaming token: no usage), else the
        token's identity."""
        given = request.headers.get("x-streamtoken-internal-key")
        if internal_key and given is not None:
            if hmac.compare_digest(given.encode(), internal_key.encode()):
                return None
            raise ApiError(401, "unauthorized", "wrong internal key (STREAMTOKEN_NOTIFIER_INTERNAL_KEY)")
        identity: Identity = await by_token(request)
        return identity

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
        body: SubscriptionCreate, who: Caller, response: Response, key: Key = None
    ) -> SubscriptionCreated | SubscriptionWithSecret:
        """Subscribe a deployment of the token's environment to rotation webhooks.

        Returns the signing secret and the management key, once. Registering the same ``deployment_id``
        again needs that key (``X-Subscription-Key``); it updates the url and action.
        """
        done = await handlers.register(who, body.deployment_id, body.url, body.action, key)
        response.status_code = 201 if done.created else 200
        public = _public(done.subscription).model_dump()
        if done.management_key is not None:
            return SubscriptionCreated(
                **public, secret=done.subscription.secret, management_key=done.management_key
            )
        return SubscriptionWithSecret(**public, secret=done.subscription.secret)

    @router.get(
        "/subscriptions",
        response_model=list[SubscriptionPublic],
        responses={200: {"headers": _NEXT_CURSOR}, **_errors()},
        tags=["subscriptions"],
    )
    async def list_subscriptions(
        who: Caller, response: Response, limit: Limit = 100, cursor: Cursor = None
    ) -> list[SubscriptionPublic]:
        """The environment's subscriptions in creation order, without secrets, a page at a time."""
        found = await handlers.list_subscriptions(who, limit + 1, _after(cursor))
        return [_public(s) for s in _page(found, limit, response)]

    @router.get(
        "/subscriptions/{subscription_id}",
        response_model=SubscriptionPublic,
        responses=_errors(404),
        tags=["subscriptions"],
    )
    async def get_subscription(subscription_id: SubscriptionId, who: Caller) -> SubscriptionPublic:
        return _public(await handlers.get_subscription(who, subscription_id))

    @router.get(
        "/subscriptions/{subscription_id}/secret",
        response_model=SubscriptionSecret,
        responses=_errors(403, 404),
        tags=["subscriptions"],
    )
    async def get_secret(subscription_id: SubscriptionId, who: Caller, key: Key = None) -> SubscriptionSecret:
        """The signing secret again, for the holder of the management key."""
        return SubscriptionSecret(id=subscription_id, secret=await handlers.secret(who, subscription_id, key))

    @router.patch(
        "/subscriptions/{subscription_id}",
        response_model=SubscriptionPublic,
        responses=_errors(403, 404, 413),
        tags=["subscriptions"],
    )
    async def update_subscription(
        subscription_id: SubscriptionId, body: SubscriptionUpdate, who: Caller, key: Key = None
    ) -> SubscriptionPublic:
        """Change url, action or enabled (needs the management key)."""
        changed = await handlers.update(who, subscription_id, key, body.url, body.action, body.enabled)
        return _public(changed)

    @router.delete(
        "/subscriptions/{subscription_id}",
        status_code=204,
        responses=_errors(403, 404),
        tags=["subscriptions"],
    )
    async def delete_subscription(subscription_id: SubscriptionId, who: Caller, key: Key = None) -> Response:
        """Delete a subscription (needs the management key); its pending deliveries become disabled."""
        await handlers.delete(who, subscription_id, key)
        return Response(status_code=204)

    @router.post(
        "/subscriptions/{subscription_id}/acks",
        response_model=SubscriptionPublic,
        responses=_errors(403, 404, 409, 413),
        tags=["subscriptions"],
    )
    async def acknowledge(
        subscription_id: SubscriptionId, body: AckCreate, who: Caller, key: Key = None
    ) -> SubscriptionPublic:
        """The deployment reports it now runs with ``generation``; frees its restart slot.

        Needs the management key; renews the subscription for the (valid) token used.
        """
        return _public(await handlers.acknowledge(who, subscription_id, body.generation, key))

    @router.get("/rotations", response_model=RotationsPublic, responses=_errors(403), tags=["rotations"])
    async def rotations(
        who: Caller,
        environment_id: Annotated[str | None, Query(max_length=200)] = None,
        limit: RotationLimit = 100,
        before: Before = None,
    ) -> RotationsPublic:
        """Per rotation: how many subscriptions were notified, have acknowledged, are pending or dead."""
        return _rotations(await handlers.rotations(who, environment_id or who.environment_id, limit, before))

    @router.get(
        "/environments/{environment_id}/rotations",
        response_model=RotationsPublic,
        responses=_errors(403),
        tags=["rotations"],
    )
    async def environment_rotations(
        environment_id: Annotated[str, Path(max_length=200)],
        who: Annotated[Identity | None, Depends(internal_or_token)],
        limit: RotationLimit = 100,
        before: Before = None,
    ) -> RotationsPublic:
        """As ``/v1/rotations``; the issuer's progress view reads it with X-Streamtoken-Internal-Key."""
        if who is None:
            return _rotations(await handlers.rotations_of(environment_id, limit, before))
        return _rotations(await handlers.rotations(who, environment_id, limit, before))

    async def internal_only(request: Request) -> None:
        """Only the issuer, with the internal key: 401 without or with a wrong one, 403 when the notifier
        has no internal key configured (nobody may send notices then)."""
        given = request.headers.get("x-streamtoken-internal-key")
        if not internal_key:
            raise ApiError(
                403, "forbidden", "notices need STREAMTOKEN_NOTIFIER_INTERNAL_KEY, which is not set here"
            )
        if given is None or not hmac.compare_digest(given.encode(), internal_key.encode()):
            raise ApiError(
                401, "unauthorized", "missing or wrong internal key (STREAMTOKEN_NOTIFIER_INTERNAL_KEY)"
            )

    @router.post(
        "/environments/{environment_id}/notices",
        response_model=NoticeAccepted,
        status_code=202,
        responses=_errors(403, 413),
        tags=["notices"],
        dependencies=[Depends(internal_only)],
    )
    async def notice(
        environment_id: Annotated[str, Path(max_length=200)], body: NoticeCreate
    ) -> NoticeAccepted:
        """The issuer warns the environment's subscribed deployments that a scheduled rotation is due.

        Needs X-Streamtoken-Internal-Key. Each enabled subscription gets a signed ``token.rotation_due``
        webhook (no ``action``: nothing to restart), retried like a rotation's; the same ``notice_id``
        again sends nothing new. Not counted in any rotation's progress.
        """
        if body.due_at.tzinfo is None or (body.forced_at is not None and body.forced_at.tzinfo is None):
            raise ApiError(422, "invalid_request", "due_at and forced_at need a time zone")
        recorded = await handlers.notice(
            Notice(
                environment_id=environment_id,
                notice_id=body.notice_id,
                kind=body.kind,
                generation=body.generation,
                due_at=body.due_at.timestamp(),
                forced_at=body.forced_at.timestamp() if body.forced_at else None,
            )
        )
        return NoticeAccepted(
            environment_id=environment_id,
            notice_id=body.notice_id,
            generation=body.generation,
            queued=recorded.deliveries,
            created=recorded.created,
        )

    @router.get(
        "/deliveries",
        response_model=list[DeliveryPublic],
        responses={200: {"headers": _NEXT_CURSOR}, **_errors()},
        tags=["deliveries"],
    )
    async def list_deliveries(
        who: Caller,
        response: Response,
        status: DeliveryStatus | None = None,
        subscription_id: Annotated[str | None, Query(max_length=40)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Cursor = None,
    ) -> list[DeliveryPublic]:
        """Deliveries, newest first, a page at a time."""
        found = await handlers.list_deliveries(who, status, limit + 1, subscription_id, _after(cursor))
        return [_delivery(d) for d in _page(found, limit, response)]

    @router.get(
        "/deliveries/{delivery_id}",
        response_model=DeliveryPublic,
        responses=_errors(404),
        tags=["deliveries"],
    )
    async def get_delivery(delivery_id: DeliveryId, who: Caller) -> DeliveryPublic:
        return _delivery(await handlers.get_delivery(who, delivery_id))

    @router.post(
        "/deliveries/{delivery_id}/replay",
        response_model=DeliveryPublic,
        responses=_errors(404, 409, 429),
        tags=["deliveries"],
    )
    async def replay(delivery_id: DeliveryId, who: Caller) -> DeliveryPublic:
        """Send a dead (or disabled) delivery again, with a fresh set of attempts and the same webhook-id.

        Refused while its subscription is disabled, and rate-limited per subscription and environment.
        """
        return _delivery(await handlers.replay(who, delivery_id))

    return router
