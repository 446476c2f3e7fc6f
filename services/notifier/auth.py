"""Who is calling: a streaming token checked against the resolver's ``GET /v1/whoami`` over httpx.

The notifier never stores or logs a token: it keeps, for a few seconds, the answer for the token's
fingerprint so a deployment's burst of calls costs one resolver lookup.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from shared.client import BAD_ANSWER, ApiCallError, AsyncResolverClient, Policy
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
    async def whoami(self, token: str, client: tuple[str, str] | None = None) -> Identity | None:
        """The token's identity, None if the token is unknown or deactivated. ``client`` (address,
        User-Agent) is the notifier's caller, forwarded so the resolver counts the use for it."""
        ...

    async def aclose(self) -> None: ...


class LogSampler:
    """At most one log line per event name every ``interval`` seconds, so a flood of refusals (anyone can
    mint well-formed tokens) costs a few lines; the line logged says how many were left out before it."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def take(self, name: str) -> int | None:
        """None: do not log this one. Else log it, with the returned count of lines left out."""
        now = self.clock()
        last = self._last.get(name)
        if last is not None and now - last < self.interval:
            self._suppressed[name] = self._suppressed.get(name, 0) + 1
            return None
        self._last[name] = now
        return self._suppressed.pop(name, 0)


class _Lru:
    """A bounded map, the least recently used entry dropped first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()

    def get(self, key: str, now: float) -> tuple[float, Identity | None] | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit

    def put(self, key: str, value: tuple[float, Identity | None]) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class ResolverWhoami:
    """``TokenVerifier`` backed by the resolver, with a short cache keyed by the token's fingerprint.

    Valid and refused answers are cached apart, each a bounded LRU: a flood of made-up tokens only churns
    the refusals and never evicts the answers for the valid tokens deployments use.
    """

    def __init__(
        self,
        resolver_url: str,
        cache_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
        max_entries: int = 10_000,
        internal_key: str | None = None,
    ) -> None:
        # No retries here: a failed check answers 503 at once and the caller asks again.
        self._resolver = AsyncResolverClient(
            resolver_url, policy=Policy(timeout=timeout, retries=0), transport=transport
        )
        # Usage (issue 12): the resolver counts a forwarded whoami for our caller, not for us, when it
        # trusts the headers (its internal key, or it has none).
        self._internal_key = internal_key
        self._cache_seconds = cache_seconds
        self._valid = _Lru(max_entries)
        self._refused = _Lru(max_entries)
        self._sampler = LogSampler()

    @property
    def cached_entries(self) -> int:
        return len(self._valid) + len(self._refused)

    async def whoami(self, token: str, client: tuple[str, str] | None = None) -> Identity | None:
        key = fingerprint(token)
        now = time.monotonic()
        hit = self._valid.get(key, now) or self._refused.get(key, now)
        if hit is not None:
            return hit[1]
        identity: Identity | None
        try:
            answer = await self._resolver.whoami(token, client, self._internal_key)
        except ApiCallError as exc:
            if exc.status in (401, 403):
                identity = None
            elif exc.unreachable:
                log.warning("resolver_unreachable", error=exc.message, fingerprint=key)
                raise ResolverUnavailable(exc.message) from None
            elif exc.code == BAD_ANSWER:
                log.error("resolver_bad_answer", fingerprint=key)
                raise ResolverUnavailable("unexpected whoami answer") from None
            else:
                log.warning("resolver_error", status=exc.status, fingerprint=key)
                raise ResolverUnavailable(f"HTTP {exc.status}") from None
        else:
            identity = Identity(answer.environment_id, answer.slot, answer.token_id, answer.generation)
        if identity is None:
            suppressed = self._sampler.take("token_refused")
            if suppressed is not None:
                log.info("token_refused", fingerprint=key[:16], suppressed=suppressed)
            # Cached for a shorter time: it might be a new token the resolver has not seen yet.
            self._refused.put(key, (now + min(self._cache_seconds, 1.0), None))
        else:
            self._valid.put(key, (now + self._cache_seconds, identity))
        return identity

    async def aclose(self) -> None:
        await self._resolver.aclose()
