"""The issuer's API as the agent uses it (Bearer PAT), on ``shared.client``; one error shape."""

from __future__ import annotations

from typing import Any

import httpx

from shared.client import ApiCallError, AsyncIssuerClient, Call, Policy
from shared.client.issuer import IssuerCalls


class IssuerError(Exception):
    """A call to the issuer failed; the message is one sentence without any token or PAT.

    ``status`` is the HTTP status when the issuer answered (``None``: unreachable), ``detail`` its message.
    """

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail


class IssuerClient:
    """``/v1/environments`` and ``/v1/environments/{id}/streaming-tokens`` of the issuer at ``issuer_url``,
    through ``shared.client.AsyncIssuerClient`` (no retries there: the agent's runtime has its own back-off).
    The answers stay plain JSON: the token sources check their shape with their own messages."""

    def __init__(
        self,
        issuer_url: str,
        pat: str,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self._pat = pat
        self._client = client
        self._policy = Policy(timeout=timeout, retries=0)

    async def _send(self, what: str, call: Call) -> httpx.Response:
        api = AsyncIssuerClient(self.issuer_url, bearer=self._pat, policy=self._policy, client=self._client)
        try:
            return await api.send(call)
        except ApiCallError as exc:
            raise self._error(what, exc) from None
        finally:
            await api.aclose()  # closes only a client it made itself

    def _error(self, what: str, exc: ApiCallError) -> IssuerError:
        if exc.unreachable:
            return IssuerError(f"issuer unreachable at {self.issuer_url} ({exc.message})")
        detail = exc.server_message
        suffix = f": {detail}" if detail else ""
        return IssuerError(f"{what}: the issuer answered {exc.status}{suffix}", exc.status, detail)

    async def _json(self, what: str, call: Call) -> Any:
        response = await self._send(what, call)
        try:
            return response.json()
        except ValueError:
            raise IssuerError(f"{what}: the issuer's answer is not JSON", response.status_code) from None

    async def streaming_tokens(self, environment_id: str, slot: int | None = None) -> dict[str, Any]:
        """The environment's token state; ``slot=2`` asks for Token 2 too (a deployment PAT answers only the
        current Token 1 unless asked for the slot its deployment uses)."""
        body = await self._json(
            f"reading the tokens of {environment_id}",
            IssuerCalls.streaming_tokens(environment_id, 2 if slot == 2 else None),
        )
        if not isinstance(body, dict):
            raise IssuerError(f"reading the tokens of {environment_id}: the issuer's answer is not an object")
        return body

    async def environment(self, environment_id: str) -> dict[str, Any]:
        body = await self._json(
            f"reading environment {environment_id}", IssuerCalls.environment(environment_id)
        )
        return dict(body)

    async def ensure_environment(self, org: str, project: str, name: str) -> dict[str, Any]:
        """Create ``org/project/name``, or read it back if it already exists (409)."""
        environment_id = f"{org}-{project}-{name}"
        try:
            body = await self._json(
                f"creating environment {environment_id}", IssuerCalls.create_environment(org, project, name)
            )
        except IssuerError as exc:
            if exc.status != 409:
                raise
            return await self.environment(environment_id)
        return dict(body)
