"""The notifier's subscription API, as the agent uses it (Bearer = the environment's streaming token)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import httpx

from services.agent.adapters.keys import SubscriptionKeys
from services.agent.domain import Action, Credential
from shared.client import ApiCallError, AsyncNotifierClient, Call, Policy
from shared.client.notifier import KEY_HEADER, NotifierCalls

CLIENT_TIMEOUT = Policy(timeout=None, retries=0)  # the shared httpx client's timeout; the runtime retries


class NotifierError(Exception):
    """A call to the notifier failed; the message is one sentence without any token.

    ``status`` is the HTTP status when the notifier answered, ``detail`` its error message.
    """

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail

    @property
    def refused(self) -> bool:
        """A 4xx other than 408/429: asking again the same way will not help until something changes."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


@dataclass(frozen=True)
class Subscription:
    id: str
    secret: str = field(repr=False)
    environment_id: str | None = None
    management_key: str | None = field(default=None, repr=False)  # needed to ack and unsubscribe


def _error(what: str, base_url: str, exc: ApiCallError) -> NotifierError:
    if exc.unreachable:
        return NotifierError(f"notifier unreachable at {base_url} ({exc.message})")
    detail = exc.server_message
    suffix = f": {detail}" if detail else ""
    return NotifierError(
        f"the notifier at {base_url} refused to {what} ({exc.status}){suffix}", exc.status, detail
    )


class NotifierClient:
    def __init__(
        self, base_url: str, client: httpx.AsyncClient, stored_keys: SubscriptionKeys | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api = AsyncNotifierClient(self.base_url, policy=CLIENT_TIMEOUT, client=client)
        self._keys: dict[str, str] = {}  # subscription id -> the management key its creation returned
        self._stored = stored_keys  # kept across agent restarts, to register the same deployment again
        self._names: dict[str, tuple[str, str]] = {}  # subscription id -> (environment id, deployment id)

    async def _call(
        self,
        what: str,
        call: Call,
        credential: Credential,
        subscription_id: str | None = None,
    ) -> httpx.Response:
        key = self._keys.get(subscription_id) if subscription_id is not None else None
        if key is not None:
            call = replace(call, headers={**call.headers, KEY_HEADER: key})
        call = replace(call, what=what, ok=tuple(range(200, 300)))
        try:
            return await self._api.send_as(call, credential.token)
        except ApiCallError as exc:
            raise _error(what, self.base_url, exc) from None

    async def subscribe(
        self, credential: Credential, deployment_id: str, url: str, action: Action
    ) -> Subscription:
        environment_id = credential.environment_id or ""
        known = self._stored.load(self.base_url, environment_id, deployment_id) if self._stored else None
        response = await self._call(
            "subscribe", NotifierCalls.subscribe(deployment_id, url, action, known), credential
        )
        try:
            data = response.json()
            key = data.get("management_key")
            subscription = Subscription(
                str(data["id"]), str(data["secret"]), data.get("environment_id"), str(key) if key else None
            )
        except (ValueError, KeyError, TypeError):
            raise NotifierError(
                f"the notifier at {self.base_url} answered an unexpected subscription"
            ) from None
        key = subscription.management_key or known  # registering again answers no new key
        if key is not None:
            self._keys[subscription.id] = key
            self._names[subscription.id] = (environment_id, deployment_id)
            if self._stored is not None:
                self._stored.save(self.base_url, environment_id, deployment_id, key)
        return subscription

    async def acknowledge(self, subscription_id: str, generation: int, credential: Credential) -> None:
        await self._call(
            "record the acknowledgement",
            NotifierCalls.acknowledge(subscription_id, generation, None),
            credential,
            subscription_id,
        )

    async def unsubscribe(self, subscription_id: str, credential: Credential) -> None:
        try:
            await self._call(
                "unsubscribe", NotifierCalls.unsubscribe(subscription_id, None), credential, subscription_id
            )
        except NotifierError as exc:
            if exc.status != 404:
                raise
        self._keys.pop(subscription_id, None)
        names = self._names.pop(subscription_id, None)
        if names is not None and self._stored is not None:
            self._stored.forget(self.base_url, *names)
