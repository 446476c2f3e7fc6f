"""The notifier's service layer: what each API command does, between the routes and the store.

Routes translate HTTP into these calls and their results (domain values) into responses; the handlers
check webhook URLs and quotas, make new subscriptions' ids and secrets (through the domain), rate-limit
replays, run the store's blocking calls off the event loop and turn the domain's refusals into
:class:`NotifierError`\\ s with a stable ``code``. Nothing here speaks HTTP: the API maps each error class
to a status once (:data:`services.notifier.api.STATUS`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from services.notifier import domain
from services.notifier.auth import Identity
from services.notifier.domain import (
    Action,
    Credentials,
    DeliveryStatus,
    GenerationAhead,
    InvalidWebhookUrl,
    Notice,
    ReplayOutcome,
    RotationProgress,
    Subscription,
    SubscriptionConflict,
    SubscriptionForbidden,
    SubscriptionLimitReached,
    WebhookDelivery,
    WindowLimiter,
    validate_webhook_url,
)
from services.notifier.settings import NotifierSettings
from services.notifier.store import NoticeRecorded, Registration, Store
from shared.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

KEY_HEADER = "X-Subscription-Key"


class NotifierError(Exception):
    """A command cannot be done; ``code`` names why and the message says it in one sentence."""

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(NotifierError):
    code = "not_found"


class Forbidden(NotifierError):
    code = "forbidden"


class Conflict(NotifierError):
    code = "conflict"


class InvalidInput(NotifierError):
    code = "invalid_request"


class RateLimited(NotifierError):
    def __init__(self, message: str, code: str, retry_after: float) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


def _not_found(kind: str) -> NotFound:
    return NotFound(f"no such {kind} in your environment")


def _forbidden() -> Forbidden:
    return Forbidden(
        f"this needs the subscription's management key in the {KEY_HEADER} header (returned once, when the "
        "subscription was created); a deployment id registered by someone else cannot be taken over"
    )


@dataclass(frozen=True, slots=True)
class Rotations:
    environment_id: str
    subscriptions: int
    rotations: list[RotationProgress]


class ReplayLimits:
    """The per-environment and per-subscription replay limits, kept in this replica's memory."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.per_environment = WindowLimiter(settings.replays_per_environment_per_minute)
        self.per_subscription = WindowLimiter(settings.replays_per_subscription_per_minute)

    def wait(self, environment_id: str, subscription_id: str, now: float) -> float:
        """0 if a replay may go now (and counts it), else the seconds to wait."""
        return self.per_environment.retry_after(environment_id, now) or self.per_subscription.retry_after(
            subscription_id, now
        )


class Handlers:
    """One method per API command, each for the caller ``who`` (a checked streaming token)."""

    def __init__(
        self,
        store: Store,
        settings: NotifierSettings,
        *,
        credentials: Callable[[], Credentials] = domain.new_credentials,
        monotonic: Callable[[], float] = time.monotonic,
        on_replay: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.credentials = credentials
        self.monotonic = monotonic
        self.on_replay = on_replay  # wakes the delivery engine: a replayed delivery is due now
        self.replay_limits = ReplayLimits(settings)

    def _checked_url(self, url: str) -> str:
        try:
            return validate_webhook_url(url, self.settings.allowed_webhook_hosts)
        except InvalidWebhookUrl as exc:
            raise InvalidInput(str(exc), "invalid_webhook_url") from None

    @staticmethod
    async def _owned(call: Callable[..., T], *args: object) -> T:
        """``call(*args)`` off the event loop; a missing management key becomes :class:`Forbidden`."""
        try:
            return await asyncio.to_thread(call, *args)
        except SubscriptionForbidden:
            raise _forbidden() from None

    # --- subscriptions -------------------------------------------------------------------------------

    async def register(
        self, who: Identity, deployment_id: str, url: str, action: Action, key: str | None
    ) -> Registration:
        """Subscribe a deployment, or register it again with its management key."""
        checked = self._checked_url(url)
        limit = self.settings.max_subscriptions_per_environment
        try:
            registration = await self._owned(
                self.store.register,
                who.environment_id,
                deployment_id,
                checked,
                action,
                who.generation,
                self.credentials(),
                who.token_id,
                key,
                limit,
            )
        except SubscriptionLimitReached:
            raise Conflict(
                f"the environment has {limit} subscriptions, the most allowed "
                "(STREAMTOKEN_NOTIFIER_MAX_SUBSCRIPTIONS_PER_ENVIRONMENT); delete unused ones",
                "too_many_subscriptions",
            ) from None
        except SubscriptionConflict:
            raise Conflict("the deployment is being registered concurrently; retry") from None
        log.info(
            "subscription_registered" if registration.created else "subscription_reregistered",
            subscription_id=registration.subscription.id,
            environment_id=who.environment_id,
            deployment_id=deployment_id,
            action=action.value,
            token_id=who.token_id,
        )
        return registration

    async def list_subscriptions(
        self, who: Identity, limit: int, after: tuple[float, str] | None
    ) -> list[Subscription]:
        return await asyncio.to_thread(self.store.list_subscriptions, who.environment_id, limit, after)

    async def get_subscription(self, who: Identity, subscription_id: str) -> Subscription:
        found = await asyncio.to_thread(self.store.get_subscription, who.environment_id, subscription_id)
        if found is None:
            raise _not_found("subscription")
        return found

    async def secret(self, who: Identity, subscription_id: str, key: str | None) -> str:
        secret = await self._owned(self.store.secret, who.environment_id, subscription_id, key)
        if secret is None:
            raise _not_found("subscription")
        return secret

    async def update(
        self,
        who: Identity,
        subscription_id: str,
        key: str | None,
        url: str | None,
        action: Action | None,
        enabled: bool | None,
    ) -> Subscription:
        checked = self._checked_url(url) if url is not None else None
        changed = await self._owned(
            self.store.update_subscription,
            who.environment_id,
            subscription_id,
            key,
            checked,
            action,
            enabled,
            who.token_id,
            who.generation,
        )
        if changed is None:
            raise _not_found("subscription")
        log.info("subscription_updated", subscription_id=subscription_id, environment_id=who.environment_id)
        return changed

    async def delete(self, who: Identity, subscription_id: str, key: str | None) -> None:
        if not await self._owned(self.store.delete_subscription, who.environment_id, subscription_id, key):
            raise _not_found("subscription")
        log.info("subscription_deleted", subscription_id=subscription_id, environment_id=who.environment_id)

    async def acknowledge(
        self, who: Identity, subscription_id: str, generation: int, key: str | None
    ) -> Subscription:
        try:
            acked = await self._owned(
                self.store.acknowledge,
                who.environment_id,
                subscription_id,
                generation,
                key,
                who.token_id,
                who.generation,
            )
        except GenerationAhead as exc:
            raise Conflict(
                f"generation {generation} is newer than the environment's current one ({exc.current})",
                "generation_ahead",
            ) from None
        if acked is None:
            raise _not_found("subscription")
        log.info(
            "acknowledged",
            subscription_id=subscription_id,
            environment_id=who.environment_id,
            generation=generation,
        )
        return acked

    # --- notices (the issuer's, with the internal key) ------------------------------------------------

    async def notice(self, notice: Notice) -> NoticeRecorded:
        """Store a warning and its deliveries (once per notice id) and wake the delivery engine."""
        recorded = await asyncio.to_thread(self.store.record_notice, notice)
        log.info(
            "notice_accepted" if recorded.created else "notice_repeated",
            environment_id=notice.environment_id,
            notice_id=notice.notice_id,
            kind=notice.kind,
            generation=notice.generation,
            deliveries=recorded.deliveries,
        )
        if recorded.created and recorded.deliveries:
            self.on_replay()
        return recorded

    # --- rotations and deliveries --------------------------------------------------------------------

    async def rotations(
        self, who: Identity, environment_id: str, limit: int, before: int | None
    ) -> Rotations:
        """Progress of the environment's newest rotations; a token sees its own environment only."""
        if environment_id != who.environment_id:
            raise Forbidden("a streaming token only shows its own environment's rotations")
        return await self.rotations_of(environment_id, limit, before)

    async def rotations_of(self, environment_id: str, limit: int, before: int | None) -> Rotations:
        """Progress of an environment's newest rotations, for a caller already allowed to see them."""
        progress = await asyncio.to_thread(self.store.rotations, environment_id, limit, before)
        subscriptions = await asyncio.to_thread(self.store.count_subscriptions, environment_id)
        return Rotations(environment_id, subscriptions, progress)

    async def list_deliveries(
        self,
        who: Identity,
        status: DeliveryStatus | None,
        limit: int,
        subscription_id: str | None,
        after: tuple[float, str] | None,
    ) -> list[WebhookDelivery]:
        return await asyncio.to_thread(
            self.store.list_deliveries, who.environment_id, status, limit, subscription_id, after
        )

    async def get_delivery(self, who: Identity, delivery_id: str) -> WebhookDelivery:
        found = await asyncio.to_thread(self.store.get_delivery, who.environment_id, delivery_id)
        if found is None:
            raise _not_found("delivery")
        return found

    async def replay(self, who: Identity, delivery_id: str) -> WebhookDelivery:
        """Queue a dead (or disabled) delivery again, rate-limited per environment and subscription."""
        found = await self.get_delivery(who, delivery_id)
        wait = self.replay_limits.wait(who.environment_id, found.subscription_id, self.monotonic())
        if wait:
            raise RateLimited(
                "too many replays for this subscription or environment; wait and retry",
                "too_many_replays",
                math.ceil(wait),
            )
        replayed = await asyncio.to_thread(self.store.replay, who.environment_id, delivery_id)
        if replayed is None:
            raise _not_found("delivery")
        delivery, outcome = replayed
        if outcome is ReplayOutcome.SUBSCRIPTION_DISABLED:
            raise Conflict(
                "the delivery's subscription is disabled or deleted; re-enable it (PATCH enabled=true) first",
                "subscription_disabled",
            )
        if outcome is ReplayOutcome.NOT_REPLAYABLE:
            raise Conflict(
                f"the delivery is {delivery.status.value}; only dead or disabled ones can be replayed",
                "not_replayable",
            )
        log.info("delivery_replayed", delivery_id=delivery_id, environment_id=who.environment_id)
        self.on_replay()
        return delivery
