"""The resolver's heartbeat route as the agent uses it: ``POST /v1/heartbeat``, Bearer = the child's token."""

from __future__ import annotations

import httpx

from services.agent.domain import Credential, HeartbeatAnswered
from shared.client import ApiCallError, AsyncResolverClient, Policy
from shared.client.resolver import ResolverCalls


class ResolverClient:
    """Reports which token a deployment's child runs with; never raises (every outcome is an answer)."""

    def __init__(self, portal_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = portal_url.rstrip("/")
        self._api = AsyncResolverClient(self.base_url, policy=Policy(timeout=None, retries=0), client=client)

    async def heartbeat(self, credential: Credential, deployment_id: str) -> HeartbeatAnswered:
        fingerprint = credential.fingerprint
        try:
            response = await self._api.send(ResolverCalls.heartbeat(credential.token, deployment_id))
        except ApiCallError as exc:
            if exc.unreachable:
                message = f"resolver unreachable at {self.base_url} ({exc.message})"
                return HeartbeatAnswered(fingerprint, "failed", message=message)
            if exc.status == 401:
                return HeartbeatAnswered(fingerprint, "refused", message=exc.server_message)
            if exc.status in (404, 405):  # an older resolver without the route
                return HeartbeatAnswered(fingerprint, "unsupported")
            detail = exc.server_message
            return HeartbeatAnswered(
                fingerprint,
                "failed",
                message=f"the resolver answered {exc.status}" + (f": {detail}" if detail else ""),
            )
        try:
            body = response.json()
            slot = body.get("slot")
            if slot not in (1, 2, None) or isinstance(slot, bool):
                raise ValueError("slot")
            token_id = body.get("token_id")
            environment_id = body.get("environment_id")
        except (ValueError, AttributeError):
            return HeartbeatAnswered(
                fingerprint, "failed", message="the resolver's answer is not the expected shape"
            )
        return HeartbeatAnswered(
            fingerprint,
            "ok",
            token_id=str(token_id) if token_id is not None else None,
            slot=slot,
            environment_id=str(environment_id) if environment_id is not None else None,
        )
