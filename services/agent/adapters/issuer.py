"""The issuer's API as the agent and ``streamtoken dev`` use it (Bearer PAT): one client, one error shape."""

from __future__ import annotations

from typing import Any

import httpx

from services.agent.adapters.http import error_message


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
    """``/v1/environments`` and ``/v1/environments/{id}/streaming-tokens`` of the issuer at ``issuer_url``."""

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
        self._timeout = timeout

    async def _request(self, method: str, path: str, json: object | None = None) -> httpx.Response:
        url = f"{self.issuer_url}{path}"
        headers = {"Authorization": f"Bearer {self._pat}", "Accept": "application/json"}
        try:
            if self._client is not None:
                return await self._client.request(
                    method, url, headers=headers, json=json, timeout=self._timeout
                )
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                return await client.request(method, url, headers=headers, json=json)
        except httpx.HTTPError as exc:
            raise IssuerError(f"issuer unreachable at {self.issuer_url} ({type(exc).__name__})") from None

    def _error(self, what: str, response: httpx.Response) -> IssuerError:
        detail = error_message(response)
        suffix = f": {detail}" if detail else ""
        return IssuerError(
            f"{what}: the issuer answered {response.status_code}{suffix}", response.status_code, detail
        )

    async def _json(self, what: str, method: str, path: str, ok: tuple[int, ...], json: object = None) -> Any:
        response = await self._request(method, path, json)
        if response.status_code not in ok:
            raise self._error(what, response)
        try:
            return response.json()
        except ValueError:
            raise IssuerError(f"{what}: the issuer's answer is not JSON", response.status_code) from None

    async def streaming_tokens(self, environment_id: str, slot: int | None = None) -> dict[str, Any]:
        """The environment's token state; ``slot=2`` asks for Token 2 too (a deployment PAT answers only the
        current Token 1 unless asked for the slot its deployment uses)."""
        query = "?slot=2" if slot == 2 else ""
        body = await self._json(
            f"reading the tokens of {environment_id}",
            "GET",
            f"/v1/environments/{environment_id}/streaming-tokens{query}",
            (200,),
        )
        if not isinstance(body, dict):
            raise IssuerError(f"reading the tokens of {environment_id}: the issuer's answer is not an object")
        return body

    async def environment(self, environment_id: str) -> dict[str, Any]:
        body = await self._json(
            f"reading environment {environment_id}", "GET", f"/v1/environments/{environment_id}", (200,)
        )
        return dict(body)

    async def ensure_environment(self, org: str, project: str, name: str) -> dict[str, Any]:
        """Create ``org/project/name``, or read it back if it already exists (409)."""
        environment_id = f"{org}-{project}-{name}"
        try:
            body = await self._json(
                f"creating environment {environment_id}",
                "POST",
                "/v1/environments",
                (200, 201),
                {"org": org, "project": project, "name": name},
            )
        except IssuerError as exc:
            if exc.status != 409:
                raise
            return await self.environment(environment_id)
        return dict(body)
