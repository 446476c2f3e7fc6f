"""Checking a PAT on every request: its signature, then its record (revoked? expired? what may it do?).

Records are cached for ``ttl_s`` seconds (``STREAMTOKEN_ISSUER_PAT_CACHE_TTL_S``, 5 s by default), so a
revocation on another replica takes effect within that time; a revocation through this process at once.
Unknown ids are never cached: a PAT just minted by ``streamtoken admin bootstrap-pat`` works at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.issuer.auth import Action, AuthError, Principal, Role, verify_pat
from services.issuer.ports import IssuerStore, PatRecord

MAX_CACHED = 10_000


@dataclass(frozen=True)
class _Cached:
    record: PatRecord
    loaded_at: datetime


class PatVerifier:
    def __init__(
        self,
        secret: str,
        store: IssuerStore,
        clock: Callable[[], datetime],
        ttl_s: float = 5.0,
    ) -> None:
        self._secret = secret
        self._store = store
        self._clock = clock
        self._ttl_s = ttl_s
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def _record(self, jti: str, now: datetime) -> PatRecord | None:
        with self._lock:
            cached = self._cache.get(jti)
        if cached is not None and 0 <= (now - cached.loaded_at).total_seconds() < self._ttl_s:
            return cached.record
        record = self._store.pat_record(jti)
        with self._lock:
            if record is None:
                self._cache.pop(jti, None)
            else:
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[jti] = _Cached(record, now)
        return record

    def forget(self, jti: str) -> None:
        """Drop a cached record (this process revoked it)."""
        with self._lock:
            self._cache.pop(jti, None)

    def verify(self, token: str) -> Principal:
        claims = verify_pat(self._secret, token)
        now = self._clock()
        record = self._record(claims.pat_id, now)
        if record is None:
            raise AuthError(
                "the personal access token is not known to this issuer; mint one with `streamtoken pats "
                "create` (or `streamtoken admin bootstrap-pat` on the issuer's machine)"
            )
        if record.revoked_at is not None:
            raise AuthError("the personal access token has been revoked; ask an admin for a new one")
        if now >= record.expires_at:
            raise AuthError("the personal access token has expired; mint a new one")
        if record.subject != claims.subject or record.role != claims.role.value:
            raise AuthError("the personal access token is invalid")
        return principal_of(record)


def principal_of(record: PatRecord) -> Principal:
    return Principal(
        subject=record.subject,
        role=Role(record.role),
        pat_id=record.jti,
        environments=record.environments,
        actions=frozenset(Action(a) for a in record.actions) if record.actions is not None else None,
    )
