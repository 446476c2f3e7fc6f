"""The resolver's token routes (Bearer = a streaming token): ``ResolverClient`` (blocking: the CLI, the dev
stack, tests; and the issuer's propagation view, with the internal key) and ``AsyncResolverClient`` (the
notifier's whoami check)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from shared.client.core import INTERNAL_KEY_HEADER, AsyncClient, Call, SyncClient
from shared.models.resolver import GenerationAnswer, HeartbeatAnswer, TopicLookup, WhoamiAnswer

FORWARDED_FOR = "X-Streamtoken-Forwarded-For"  # services.resolver.api.FORWARDED_FOR_HEADER
FORWARDED_USER_AGENT = "X-Streamtoken-Forwarded-User-Agent"


class ResolverCalls:
    @staticmethod
    def topic(name: str) -> Call:
        return Call("GET", f"/v1/topics/{quote(name, safe='')}", f"resolving topic {name}")

    @staticmethod
    def whoami(token: str, headers: Mapping[str, str] | None = None) -> Call:
        return Call(
            "GET", "/v1/whoami", "whoami", headers={"Authorization": f"Bearer {token}", **(headers or {})}
        )

    @staticmethod
    def heartbeat(token: str, deployment_id: str) -> Call:
        return Call(
            "POST",
            "/v1/heartbeat",
            "heartbeat",
            json={"deployment_id": deployment_id},
            headers={"Authorization": f"Bearer {token}"},
        )

    @staticmethod
    def generation(environment_id: str) -> Call:
        path = f"/v1/environments/{quote(environment_id, safe='')}/generation"
        return Call("GET", path, f"reading the generation of {environment_id}")


def forwarded(client: tuple[str, str] | None, internal_key: str | None) -> dict[str, str]:
    """The headers a service sends to have its caller (address, User-Agent) counted instead of itself."""
    if client is None:
        return {}
    headers = {FORWARDED_FOR: client[0][:100], FORWARDED_USER_AGENT: client[1][:300]}
    if internal_key:
        headers[INTERNAL_KEY_HEADER] = internal_key
    return headers


class ResolverClient(SyncClient):
    service = "resolver"
    calls = ResolverCalls

    def topic(self, name: str) -> TopicLookup:
        return self.get(self.calls.topic(name), TopicLookup)

    def whoami(self, token: str) -> WhoamiAnswer:
        return self.get(self.calls.whoami(token), WhoamiAnswer)

    def generation(self, environment_id: str) -> GenerationAnswer:
        """The environment's generation in this replica's table (send the resolver's internal key as
        ``headers={INTERNAL_KEY_HEADER: key}`` when it has one)."""
        return self.get(self.calls.generation(environment_id), GenerationAnswer)


class AsyncResolverClient(AsyncClient):
    service = "resolver"
    calls = ResolverCalls

    async def whoami(
        self, token: str, client: tuple[str, str] | None = None, internal_key: str | None = None
    ) -> WhoamiAnswer:
        """The token's identity; an ``ApiCallError`` with status 401/403 when the resolver refuses it."""
        return await self.get(self.calls.whoami(token, forwarded(client, internal_key)), WhoamiAnswer)

    async def heartbeat(self, token: str, deployment_id: str) -> HeartbeatAnswer:
        """Report the token a deployment runs with (usage with its deployment id)."""
        return await self.get(self.calls.heartbeat(token, deployment_id), HeartbeatAnswer)
