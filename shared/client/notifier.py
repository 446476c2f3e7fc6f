"""The notifier's API (Bearer = a streaming token of the environment): ``NotifierClient`` (blocking: the
CLI; and the issuer, with the notifier's internal key instead of a token) and ``AsyncNotifierClient`` (the
agent). Answers are the notifier's own models (``shared.models.notifier``); a subscription's management
key goes as ``X-Subscription-Key``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from shared.client.core import AsyncClient, Call, SyncClient, parse
from shared.models.notifier import (
    Action,
    DeliveryPublic,
    DeliveryStatus,
    NoticeAccepted,
    NoticeCreate,
    RotationsPublic,
    SubscriptionCreated,
    SubscriptionPublic,
    SubscriptionWithSecret,
)

KEY_HEADER = "X-Subscription-Key"  # services.notifier.handlers.KEY_HEADER
NEXT_CURSOR = "X-Next-Cursor"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` asks for the next one (``None``: the last page)."""

    items: list[T]
    next_cursor: str | None


def _key(key: str | None) -> dict[str, str]:
    return {KEY_HEADER: key} if key else {}


class NotifierCalls:
    @staticmethod
    def subscribe(deployment_id: str, url: str, action: Action | str, key: str | None = None) -> Call:
        body = {"deployment_id": deployment_id, "url": url, "action": str(action)}
        return Call("POST", "/v1/subscriptions", "subscribe", json=body, headers=_key(key), ok=(200, 201))

    @staticmethod
    def acknowledge(subscription_id: str, generation: int, key: str | None) -> Call:
        path = f"/v1/subscriptions/{quote(subscription_id, safe='')}/acks"
        return Call(
            "POST", path, "record the acknowledgement", json={"generation": generation}, headers=_key(key)
        )

    @staticmethod
    def unsubscribe(subscription_id: str, key: str | None) -> Call:
        path = f"/v1/subscriptions/{quote(subscription_id, safe='')}"
        return Call("DELETE", path, "unsubscribe", headers=_key(key), ok=(200, 204))

    @staticmethod
    def subscriptions(limit: int, cursor: str | None) -> Call:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return Call("GET", "/v1/subscriptions", "list subscriptions", params=params)

    @staticmethod
    def rotations() -> Call:
        return Call("GET", "/v1/rotations", "read the rotations")

    @staticmethod
    def environment_rotations(environment_id: str, limit: int) -> Call:
        path = f"/v1/environments/{quote(environment_id, safe='')}/rotations"
        return Call("GET", path, f"read the rotations of {environment_id}", params={"limit": limit})

    @staticmethod
    def notice(environment_id: str, notice: NoticeCreate) -> Call:
        path = f"/v1/environments/{quote(environment_id, safe='')}/notices"
        return Call("POST", path, "send the notice", json=notice.model_dump(mode="json"), ok=(202,))

    @staticmethod
    def deliveries(limit: int, cursor: str | None, status: DeliveryStatus | str | None) -> Call:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        return Call("GET", "/v1/deliveries", "list deliveries", params=params)

    @staticmethod
    def replay(delivery_id: str) -> Call:
        return Call("POST", f"/v1/deliveries/{quote(delivery_id, safe='')}/replay", "replay the delivery")


def _page(service: str, base_url: str, response: httpx.Response, kind: type[T]) -> Page[T]:
    return Page(parse(service, base_url, response, list[kind]), response.headers.get(NEXT_CURSOR))  # type: ignore[valid-type]


class NotifierClient(SyncClient):
    """The notifier at ``base_url`` with a streaming token of one environment (blocking)."""

    service = "notifier"
    calls = NotifierCalls

    def subscriptions(self, limit: int = 100, cursor: str | None = None) -> Page[SubscriptionPublic]:
        response = self.send(self.calls.subscriptions(limit, cursor))
        return _page(self.service, self.base_url, response, SubscriptionPublic)

    def unsubscribe(self, subscription_id: str, key: str | None) -> None:
        self.send(self.calls.unsubscribe(subscription_id, key))

    def rotations(self) -> RotationsPublic:
        return self.get(self.calls.rotations(), RotationsPublic)

    def deliveries(
        self, limit: int = 100, cursor: str | None = None, status: DeliveryStatus | str | None = None
    ) -> Page[DeliveryPublic]:
        response = self.send(self.calls.deliveries(limit, cursor, status))
        return _page(self.service, self.base_url, response, DeliveryPublic)

    def replay(self, delivery_id: str) -> DeliveryPublic:
        return self.get(self.calls.replay(delivery_id), DeliveryPublic)

    # The issuer's calls: with the notifier's internal key (``headers={INTERNAL_KEY_HEADER: key}``), no token.

    def environment_rotations(self, environment_id: str, limit: int = 100) -> RotationsPublic:
        """Any environment's rotations, newest first (the issuer's progress view)."""
        return self.get(self.calls.environment_rotations(environment_id, limit), RotationsPublic)

    def notice(self, environment_id: str, notice: NoticeCreate) -> NoticeAccepted:
        """Have the notifier send ``notice`` to the environment's subscribed deployments."""
        return self.get(self.calls.notice(environment_id, notice), NoticeAccepted)


class AsyncNotifierClient(AsyncClient):
    """Subscribe, acknowledge, unsubscribe: what the agent does. ``bearer`` is not fixed here (a rotation
    changes the agent's token): every call takes the token it is made with."""

    service = "notifier"
    calls = NotifierCalls

    async def send_as(self, call: Call, token: str) -> httpx.Response:
        """``call`` with ``token`` as its Bearer."""
        return await self.send(
            Call(
                call.method,
                call.path,
                call.what,
                call.json,
                call.params,
                {"Authorization": f"Bearer {token}", **call.headers},
                call.ok,
            )
        )

    async def subscribe(
        self, token: str, deployment_id: str, url: str, action: Action | str, key: str | None = None
    ) -> SubscriptionCreated | SubscriptionWithSecret:
        response = await self.send_as(self.calls.subscribe(deployment_id, url, action, key), token)
        kind = SubscriptionCreated if response.status_code == 201 else SubscriptionWithSecret
        return parse(self.service, self.base_url, response, kind)

    async def acknowledge(self, token: str, subscription_id: str, generation: int, key: str | None) -> None:
        await self.send_as(self.calls.acknowledge(subscription_id, generation, key), token)

    async def unsubscribe(self, token: str, subscription_id: str, key: str | None) -> None:
        await self.send_as(self.calls.unsubscribe(subscription_id, key), token)
