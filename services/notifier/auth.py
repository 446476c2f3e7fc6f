"""Who is calling: a streaming token checked against the resolver's ``GET /v1/whoami`` over httpx.

The notifier never stores or logs a token: it keeps, for a few seconds, the answer for the token's
fingerprint so a deployment's burst of calls costs one resolver lookup.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import httpx

from shared.logs import get_logger
from shared.tokens import fingerprint

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """What a valid streaming token is: its environment, slot, public id and the generation it belongs to."""

    environment_id: str
    slot: int
    token_id: str
    generation: int


class ResolverUnavailable(Exception):
    """The resolver could not answer; the caller is not at fault."""


class TokenVerifier(Protocol):
    async def whoami(self, token: str) -> Identity | None:
        """The token's identity, None if the token is unknown or deactivated."""
        ...

    async def aclose(self) -> None: ...


class ResolverWhoami:
    """``TokenVerifier`` backed by the resolver, with a short cache keyed by the token's fingerprint."""

    def __init__(
        self,
        resolver_url: str,
        cache_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=resolver_url.rstrip("/"), timeout=timeout, transport=transport
        )
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Identity | None]] = {}

    async def whoami(self, token: str) -> Identity | None:
        key = fingerprint(token)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            response = await self._client.get("/v1/whoami", headers={"authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            log.warning("resolver_unreachable", error=type(exc).__name__, fingerprint=key)
            raise ResolverUnavailable(type(exc).__name__) from None
        if response.status_code in (401, 403):
            identity = None
        elif response.status_code == 200:
            try:
                data = response.json()
                identity = Identity(
                    environment_id=str(data["environment_id"]),
                    slot=int(data["slot"]),
                    token_id=str(data["token_id"]),
                    generation=int(data["generation"]),
                )
            except (ValueError, KeyError, TypeError):
                log.error("resolver_bad_answer", fingerprint=key)
                raise ResolverUnavailable("unexpected whoami answer") from None
        else:
            log.warning("resolver_error", status=response.status_code, fingerprint=key)
            raise ResolverUnavailable(f"HTTP {response.status_code}")
        if len(self._cache) > 10_000:
            self._cache.clear()
        # A rejected token is cached for a shorter time: it might be a new one the resolver has not seen yet.
        ttl = self._cache_seconds if identity is not None else min(self._cache_seconds, 1.0)
        self._cache[key] = (now + ttl, identity)
        return identity

    async def aclose(self) -> None:
        await self._client.aclose()
